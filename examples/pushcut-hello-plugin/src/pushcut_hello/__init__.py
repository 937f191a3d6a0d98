"""A toy pushcut plugin: the ``hello_line`` env and the ``hello_gaussian`` policy.

See README.md, and docs/writing-a-plugin.md in the pushcut repository for the
step-by-step tutorial that builds this package.
"""

from pushcut_hello.env import HelloLineConfig, HelloLineEnv
from pushcut_hello.policy import HelloGaussianConfig, HelloGaussianPolicy

__all__ = ["HelloGaussianConfig", "HelloGaussianPolicy", "HelloLineConfig", "HelloLineEnv"]
