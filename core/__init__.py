"""pushcut: online RL with binary success rewards for Vision-Language-Action policies."""

from pushcut.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
