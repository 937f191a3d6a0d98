"""``metaworld``: Meta-World v3 (50 Sawyer tasks in MuJoCo, the MT10/MT50/ML benchmarks) on the real
``metaworld`` package, run in its own virtualenv behind the env transport.

Meta-World 3.x pins ``mujoco==3.3.0`` while the ``[libero]`` extra pins 3.9.0, so it cannot share
the trainer's venv. The trainer imports only this module and :mod:`.config` (no Meta-World, no
MuJoCo), so it registers and validates ``env.type=metaworld`` everywhere; the simulator is
imported where the env is built, in a worker on the Meta-World venv's interpreter::

    bash scripts/setup-metaworld.sh                 # builds .venv-metaworld (no torch in it)
    pushcut train configs/metaworld_mt10_tiny.yaml  # rollout.transport.python=.venv-metaworld/bin/python

Tasks are Meta-World's task names (``pick-place-v3`` ...) or a benchmark (``env.benchmark``); start
states are each task's 50 seeded variations (the last ``num_eval_init_states`` held out); actions
are 4 floats (dx, dy, dz, gripper); success is ``info["success"]`` with early stop; every task has
Meta-World's scripted expert as ``expert_action()``. See docs/metaworld.md.
"""

from __future__ import annotations

from pushcut import hookimpl
from pushcut.plugins.envs.metaworld.config import BENCHMARKS, INSTRUCTIONS, MetaworldConfig

__all__ = ["BENCHMARKS", "INSTRUCTIONS", "MetaworldConfig", "make_env"]


def make_env(config: MetaworldConfig):
    """The registered factory: Meta-World is imported here, in the worker that builds the env."""
    from pushcut.plugins.envs.metaworld.env import MetaworldEnv

    return MetaworldEnv(config)


@hookimpl
def pushcut_register_envs(registry) -> None:
    registry.add("metaworld", MetaworldConfig, make_env, requires="metaworld")
