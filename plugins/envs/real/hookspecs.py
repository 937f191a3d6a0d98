"""The hook the real-robot plugin adds (through :func:`pushcut.hookspecs.pushcut_addhooks`), so robot
drivers register like any other component and appear in ``pushcut plugins``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pushcut.hookspecs import hookspec

if TYPE_CHECKING:
    from pushcut.registry import Registry


@hookspec
def pushcut_register_robot_drivers(registry: Registry[Any]) -> None:
    """Register robot drivers: ``registry.add(name, ConfigClass, DriverClass)``.

    ``DriverClass(config)`` returns a
    :class:`pushcut.plugins.envs.real.driver.RobotDriver`: connect, observe
    (camera frames + end-effector and joint state), predict where a command
    leads, command one action, hold, stop, home. ``pushcut robot serve`` builds
    the configured ``env.driver: {type: NAME, ...its options}`` from the plugin
    manager's ``robot_drivers`` registry and puts the robot-side safety layer
    between the trainer and the driver. Built in: ``sim`` (any registered env as
    a robot) and ``replay`` (records commands, canned frames).
    """
