"""``tabletop``: the embedded default simulator — MuJoCo tabletop manipulation
with language instructions, binary success and scripted experts.

Scene: a table with a Cartesian (gantry) gripper — three position-servoed
slide joints x / y / z and two parallel fingers — three coloured cubes (red,
green, blue), a white plate, a flat yellow target square, a push button and a
cabinet with a drawer. Every task uses the same scene; the instruction says
which object matters.

Tasks (easiest first; default step budget in brackets, the scripted expert
needs about a third of it): ``press_button`` (40), ``close_drawer`` (50),
``lift_blue`` (60), ``open_drawer`` (60), ``push_red_to_target`` (80),
``place_red_on_plate`` (100), ``stack_green_on_red`` (120).

Action convention — 4 floats per step, each in [-1, 1] (values outside are clipped):

* ``dx, dy, dz``: move the gripper's servo target by ``value × 2 cm`` along
  world x (right in the camera image), y (away from the camera), z (up); the
  target stays inside the workspace and at most 3 cm ahead of the gripper.
* ``gripper``: finger opening, -1 = fully open (8 cm gap), +1 = closed,
  linear in between.

One env step is 0.05 s of simulated time (20 Hz control, 5 physics substeps
of 10 ms). An episode ends at success (checked after every action, so a chunk
stops early) or at the task's step budget.

Observations: ``image`` (S, S, 3) uint8 from the ``agentview`` camera,
``wrist_image`` likewise from a gripper-mounted camera when
``wrist_camera=True``, ``state`` float32 (4,) = grip point x, y, z (m) and the
finger gap (m).

Initial states: state ``k`` of task ``t`` is generated from a generator seeded
with (crc32(t), k); the last ``num_eval_init_states`` are held out for eval.
By default objects, gripper and cabinet go anywhere on the table; with
``jitter=j`` (m) each task keeps one nominal arrangement and every state moves
each of them by up to ±j, the way LIBERO's initial states perturb a fixed scene
(the quickstart uses 3 cm).

Experts: :func:`make_expert` and ``env.expert_action()`` (see :mod:`.experts`).
Rendering backend: ``gl_backend`` / ``$MUJOCO_GL`` (see :mod:`.render`).
"""

from __future__ import annotations

import importlib
from typing import Any

from pushcut import hookimpl
from pushcut.plugins.envs.tabletop.config import TASK_IDS, TabletopConfig

# Registering the env imports only its config: a trainer whose envs run elsewhere (another
# venv, a server) need not import MuJoCo; `requires` names it for where the env is built.

_LAZY = {"TabletopEnv": "env", "make_expert": "experts", "TASKS": "tasks"}
__all__ = ["TASKS", "TASK_IDS", "TabletopConfig", "TabletopEnv", "make_expert"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_env(config: TabletopConfig):
    """The registered factory: MuJoCo is imported here, where the env is built."""
    from pushcut.plugins.envs.tabletop.env import TabletopEnv

    return TabletopEnv(config)


@hookimpl
def pushcut_register_envs(registry) -> None:
    registry.add("tabletop", TabletopConfig, make_env, requires="mujoco")
