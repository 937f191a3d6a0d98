"""Reusable contract tests for plugin authors (pytest), and helpers for tests.

Subclass a suite in your own test file and provide its fixtures; every
``test_*`` method then runs against your component::

    import pytest
    from pushcut.testing import EnvContract

    class TestMyEnv(EnvContract):
        @pytest.fixture
        def env(self):
            env = MyEnv(MyEnvConfig())
            yield env
            env.close()

pushcut runs these same suites over every built-in plugin. The suites check
the contract (shapes, determinism, log-prob consistency, save/load), not
whether your policy is good or your simulator realistic. ``EnvContract`` and
``RobotDriverContract`` import no torch: run them in a simulator's own venv.

Importing this package imports neither pytest nor torch: the suites
(:mod:`pushcut.testing.contracts`) are loaded when first named.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pushcut.pluginmanager import PluginManager, get_plugin_manager

if TYPE_CHECKING:
    from pushcut.testing.contracts import EnvContract, PolicyContract, RobotDriverContract, SuccessDetectorContract

SUITES = ("EnvContract", "PolicyContract", "RobotDriverContract", "SuccessDetectorContract")

__all__ = [*SUITES, "registered_plugin"]


@contextlib.contextmanager
def registered_plugin(plugin: object, name: str, manager: PluginManager | None = None) -> Iterator[PluginManager]:
    """Register an in-process plugin for the duration of a ``with`` block."""
    manager = manager or get_plugin_manager()
    manager.register(plugin, name=name)
    try:
        yield manager
    finally:
        manager.unregister(name)


def __getattr__(name: str) -> Any:
    if name in SUITES:  # pytest is imported here, by the suite's own module, not by `import pushcut.testing`
        from pushcut.testing import contracts

        return getattr(contracts, name)
    raise AttributeError(f"module 'pushcut.testing' has no attribute {name!r}")
