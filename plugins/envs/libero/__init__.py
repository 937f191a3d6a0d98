"""``libero``: the LIBERO manipulation suites through the real ``libero`` package
(robosuite 1.4 on MuJoCo 3.9), run with the evaluation protocol of the
OpenVLA-OFT and SimpleVLA-RL papers.

Install: ``pip install "pushcut[libero]"`` (pins mujoco 3.9.0, robosuite 1.4.0,
bddl 1.0.1, libero 0.1.1; see docs/libero.md). The package ships task files and
initial states but not the scene and object assets: point ``env.assets_dir`` or
``$PUSHCUT_LIBERO_ASSETS`` at LIBERO's ``assets`` folder.

Suites: ``libero_spatial``, ``libero_object``, ``libero_goal``, ``libero_10``,
``libero_90`` (``env.suite``). Task ids are LIBERO's task names (BDDL stems);
instructions are the benchmark's ``task.language``; each task has 50 stored
initial states, the last ``num_eval_init_states`` (10) held out for eval.

Per episode: seed, reset, stored initial state, 10 no-op settle steps, then at
most the suite's budget of policy steps (220 / 280 / 300 / 520 / 400, as in
OpenVLA-OFT; ``max_steps`` to change it, SimpleVLA-RL uses 512). Success is
LIBERO's own goal predicate, checked after every action.

Observations: ``image`` (third-person ``agentview``) and ``wrist_image``
(``robot0_eye_in_hand``) rendered at ``render_size``, rotated 180° and resized to
``image_size``; ``state`` (8,) = end-effector position, axis-angle orientation,
finger joint positions.

Actions, 7 per step: OSC_POSE deltas (6, in [-1, 1]) and the gripper. With
``gripper_convention=openvla`` (default) the gripper is OpenVLA's 0 = close …
1 = open, rescaled, binarised and sign-flipped into LIBERO's -1 = open /
+1 = close; with ``libero`` it is passed through (LIBERO's demo files).
"""

from __future__ import annotations

from typing import Any

from pushcut import hookimpl

# Registering the env imports only its config (never libero itself, whose import prompts on stdin
# before its config file exists): a trainer whose LIBERO envs run in another venv registers and
# validates them without it; `requires` names it for where the env is built (pushcut[libero]).
from pushcut.plugins.envs.libero.config import SUITE_MAX_STEPS, SUITES, LiberoConfig

__all__ = ["SUITES", "SUITE_MAX_STEPS", "LiberoConfig", "LiberoEnv"]


def __getattr__(name: str) -> Any:
    if name == "LiberoEnv":  # imported on use: registering the plugin imports only its config
        from pushcut.plugins.envs.libero.env import LiberoEnv

        return LiberoEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_env(config: LiberoConfig):
    """The registered factory: the simulator's modules are imported here, where the env is built."""
    from pushcut.plugins.envs.libero.env import LiberoEnv

    return LiberoEnv(config)


@hookimpl
def pushcut_register_envs(registry) -> None:
    registry.add("libero", LiberoConfig, make_env, requires="libero")
