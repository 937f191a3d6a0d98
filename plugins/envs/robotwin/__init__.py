"""``robotwin``: RoboTwin 2.0 (and 1.0) dual-arm tasks on the real RoboTwin code, run in
RoboTwin's own virtualenv behind the env transport.

The trainer's venv imports only this module and :mod:`.config` (no RoboTwin, no SAPIEN), so it
can register and validate ``env.type=robotwin``; the simulator is imported where the env is
built, in a worker on the RoboTwin venv's interpreter::

    scripts/setup-robotwin.sh                       # builds .venv-robotwin (+ apt: Vulkan on CPU)
    pushcut train configs/robotwin_tiny.yaml rollout.transport.python=.venv-robotwin/bin/python

Tasks are RoboTwin's task modules (``stack_blocks_two`` ...), initial states are seeds (expert
verified with ``pushcut robotwin seeds``, or an unverified range), actions are 14 joint targets
per step executed a chunk at a time as one planned path, with early stop on ``check_success``.
See docs/robotwin.md.
"""

from __future__ import annotations

from typing import Any

from pushcut import hookimpl
from pushcut.plugins.envs.robotwin.config import (
    PRIMITIVES_ONLY_2_0,
    STEP_LIMITS_2_0,
    TASKS_1_0,
    RobotwinConfig,
)

__all__ = ["PRIMITIVES_ONLY_2_0", "STEP_LIMITS_2_0", "TASKS_1_0", "RobotwinConfig", "make_env"]


def make_env(config: RobotwinConfig):
    """The registered factory: RoboTwin is imported here, in the worker that builds the env."""
    if config.version == "1.0":
        from pushcut.plugins.envs.robotwin.v1 import Robotwin1Env

        return Robotwin1Env(config)
    from pushcut.plugins.envs.robotwin import runtime

    runtime.check_installed()
    from pushcut.plugins.envs.robotwin.env import RobotwinEnv

    return RobotwinEnv(config)


@hookimpl
def pushcut_register_envs(registry) -> None:
    registry.add("robotwin", RobotwinConfig, make_env)


@hookimpl
def pushcut_register_commands(subparsers) -> None:
    p = subparsers.add_parser("robotwin", help="RoboTwin tools: collect expert-verified seeds (docs/robotwin.md)")
    rsub = p.add_subparsers(dest="robotwin_command", metavar="SUBCOMMAND", required=True)
    seeds = rsub.add_parser("seeds", help="keep the seeds of a task where RoboTwin's scripted expert succeeds")
    from pushcut.plugins.envs.robotwin.seeds import add_arguments

    add_arguments(seeds)
    seeds.set_defaults(run=_seeds)


def _seeds(args: Any) -> int:
    from pushcut.plugins.envs.robotwin.seeds import run

    return run(args)
