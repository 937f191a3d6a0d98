"""RoboTwin 1.0 (branch RoboTwin-1.0) behind the same Env contract, against a user's checkout
(``env.version=1.0 env.robotwin_root=/path/to/RoboTwin``).

1.0 is not packaged and pins sapien 3.0.0b1 + mplib 0.1.1 (it does not run on mplib 0.2.1), so
it needs its own venv built from the checkout's instructions; its assets are the checkout's own.
What differs from 2.0 (docs/robotwin.md has the table):

* tasks are ``envs/<task>.py`` classes on ``Base_task`` (not ``Base_Task``), configured by
  ``task_config/<task>.yml``; each task's ``setup_demo`` sets its own ``step_lim``;
* one ALOHA (ARX5) model with the gripper joints driven in metres, 0 (closed) .. 0.045 (open):
  this adapter keeps 2.0's convention at the contract (gripper 0 .. 1) and converts both ways;
* no public ``take_action``: the policy loop lives in ``apply_policy_demo``; the adapter executes a
  chunk as that loop does (TOPP over current joints + chunk, gripper ramped, ``check_success``
  after every physics step);
* cameras are fixed in code (head, front, left/right wrist) at the sizes of the task config.

The conversions and the task table are tested without the simulator
(tests/plugins/envs/robotwin/test_robotwin_config.py); the 1.0 simulator is not run by
pushcut's tests.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pushcut.envcontract import (
    OBS_IMAGE,
    OBS_STATE,
    OBS_WRIST_IMAGE,
    ActionSpec,
    Env,
    Observation,
    StepResult,
    TaskSpec,
    check_action_chunk,
    split_init_states,
)
from pushcut.errors import EnvError
from pushcut.plugins.envs.robotwin.config import GRIPPER_OPEN_1_0, INSTRUCTIONS_1_0, TASKS_1_0, RobotwinConfig

ACTION_DIM = 14
LEFT_GRIPPER, RIGHT_GRIPPER = 6, 13
"""Indices of the two grippers in the 14-dim joint vector (left arm 0..5, right arm 7..12)."""
LEFT_GRIPPER_JOINTS, RIGHT_GRIPPER_JOINTS = slice(34, 36), slice(36, 38)
"""Active-joint slices of the ALOHA model's finger joints in 1.0's Base_task."""


def actions_to_v1(actions: np.ndarray) -> np.ndarray:
    """Contract actions (..., 14), grippers 0..1 → 1.0's joint targets, grippers in metres."""
    out = np.array(actions, dtype=np.float64, copy=True)
    out[..., [LEFT_GRIPPER, RIGHT_GRIPPER]] = np.clip(out[..., [LEFT_GRIPPER, RIGHT_GRIPPER]], 0.0, 1.0) * GRIPPER_OPEN_1_0
    return out


def state_from_v1(joint_action: np.ndarray) -> np.ndarray:
    """1.0's ``joint_action`` vector (14,), grippers in metres → the contract's state, grippers 0..1."""
    out = np.array(joint_action, dtype=np.float64, copy=True).reshape(-1)
    if out.shape != (ACTION_DIM,):
        raise EnvError(f"RoboTwin 1.0 returned a {out.shape} joint vector; expected ({ACTION_DIM},)")
    out[[LEFT_GRIPPER, RIGHT_GRIPPER]] = out[[LEFT_GRIPPER, RIGHT_GRIPPER]] / GRIPPER_OPEN_1_0
    return out.astype(np.float32)


def observation_from_v1(raw: dict[str, Any], wrist: bool) -> Observation:
    """The contract's observation from 1.0's ``get_obs()`` dict (``observation.<camera>.rgb``,
    ``joint_action``: a 14-vector, or a dict with ``vector`` in later 1.x snapshots)."""
    cams = raw["observation"]
    joints = raw["joint_action"]
    if isinstance(joints, dict):
        joints = joints["vector"]
    obs: Observation = {OBS_IMAGE: np.ascontiguousarray(cams["head_camera"]["rgb"][..., :3], dtype=np.uint8),
                        OBS_STATE: state_from_v1(np.asarray(joints))}
    if wrist:
        obs[OBS_WRIST_IMAGE] = np.ascontiguousarray(cams["left_camera"]["rgb"][..., :3], dtype=np.uint8)
    return obs


def task_table() -> list[tuple[str, str, str]]:
    """(1.0 task, closest 2.0 task or '', instruction) for every 1.0 task."""
    return [(t, TASKS_1_0[t], INSTRUCTIONS_1_0[t]) for t in sorted(TASKS_1_0)]


class Robotwin1Env(Env):
    """RoboTwin 1.0 tasks from a checkout (run in a venv with the checkout's own pins)."""

    def __init__(self, config: RobotwinConfig) -> None:
        self.config = config
        self.root = Path(config.robotwin_root).expanduser().resolve()
        if not (self.root / "envs").is_dir() or not (self.root / "task_config").is_dir():
            raise EnvError(f"env.robotwin_root={self.root} is not a RoboTwin-1.0 checkout (no envs/ and task_config/); "
                           "clone the RoboTwin-1.0 branch and point env.robotwin_root at it")
        # 1.0 opens its URDFs and task configs by paths relative to the checkout
        os.chdir(self.root)
        if str(self.root) not in sys.path:
            sys.path.insert(0, str(self.root))
        self._obj: Any = None
        self._task = ""
        self._init_state = -1
        self._steps = self._budget = 0
        self._success = False
        self._limits: dict[str, int] = {}
        self._seeds = tuple(range(config.seed_start, config.seed_start + config.num_init_states))
        for task in config.tasks:
            self._setup(task, self._seeds[0])
            self._limits[task] = config.max_steps or int(self._obj.step_lim or 400)
        self._init_state = -1

    def _task_args(self, task: str) -> dict[str, Any]:
        import yaml

        path = self.root / "task_config" / f"{task}.yml"
        try:
            args = yaml.safe_load(path.read_text()) or {}
        except OSError:
            raise EnvError(f"{path} is missing: RoboTwin 1.0 configures each task there (run its "
                           f"task_config generation, or copy the branch's file)") from None
        args.update(task_name=task, render_freq=0, is_save=False, eval_video_log=False)
        return args

    def _setup(self, task: str, seed: int) -> None:
        if self._obj is not None:
            try:
                self._obj.close()
            except Exception:
                pass
        try:
            cls = getattr(importlib.import_module(f"envs.{task}"), task)
        except (ImportError, AttributeError) as exc:
            raise EnvError(f"RoboTwin 1.0 task {task!r} does not import from {self.root}: {exc}") from None
        obj = cls()
        try:
            obj.setup_demo(now_ep_num=seed, seed=seed, **self._task_args(task))
        except EnvError:
            raise
        except Exception as exc:
            raise EnvError(f"RoboTwin 1.0 {task}.setup_demo(seed={seed}) failed: {type(exc).__name__}: {exc}") from None
        self._obj, self._task = obj, task

    def tasks(self) -> list[TaskSpec]:
        n = len(self._seeds)
        train, evaluate = split_init_states(n, self.config.num_eval_init_states)
        return [TaskSpec(t, INSTRUCTIONS_1_0[t], n, train, evaluate, self._limits[t]) for t in self.config.tasks]

    @property
    def action_spec(self) -> ActionSpec:
        low = [-math.pi] * ACTION_DIM
        high = [math.pi] * ACTION_DIM
        low[LEFT_GRIPPER] = low[RIGHT_GRIPPER] = 0.0
        high[LEFT_GRIPPER] = high[RIGHT_GRIPPER] = 1.0
        return ActionSpec(ACTION_DIM, tuple(low), tuple(high))

    def reset(self, task_id: str, init_state: int) -> Observation:
        if task_id not in self._limits:
            raise EnvError(f"unknown RoboTwin 1.0 task {task_id!r}; this env offers {', '.join(self.config.tasks)}")
        self._setup(task_id, self._seeds[init_state])
        self._init_state, self._steps, self._budget, self._success = init_state, 0, self._limits[task_id], False
        return observation_from_v1(self._obj.get_obs(), self.config.wrist_camera)

    def step(self, actions: np.ndarray, record: bool = False) -> StepResult:
        chunk = check_action_chunk(actions, ACTION_DIM, "robotwin 1.0", "(left arm 6, left gripper, right arm 6, right gripper)")
        chunk = chunk[: max(1, self._budget - self._steps)]
        frames: list[np.ndarray] = []
        steps, success = _execute_chunk_v1(self._obj, actions_to_v1(chunk), frames.append if record else None,
                                           self.render)
        self._steps += steps
        self._success = success
        return StepResult.after_chunk(observation_from_v1(self._obj.get_obs(), self.config.wrist_camera), steps,
                                      success, episode_steps=self._steps, budget=self._budget, task_id=self._task,
                                      init_state=self._init_state, frames=frames)

    def render(self) -> np.ndarray:
        obj = self._obj
        obj._update_render()
        obj.head_camera.take_picture()
        rgba = obj.head_camera.get_picture("Color")
        return np.clip(np.asarray(rgba)[..., :3] * 255, 0, 255).astype(np.uint8)

    def close(self) -> None:
        if self._obj is not None:
            try:
                self._obj.close()
            except Exception:
                pass
            self._obj = None


def _execute_chunk_v1(obj: Any, targets: np.ndarray, on_frame: Any, render: Any) -> tuple[int, bool]:
    """A chunk on a 1.0 task as its ``apply_policy_demo`` runs one (see the module docstring)."""
    current = np.asarray(obj.get_obs()["joint_action"] if not hasattr(obj, "now_obs") or not obj.now_obs
                         else obj.now_obs["joint_action"])
    if isinstance(current, dict):
        current = np.asarray(current["vector"])
    n = len(targets)
    paths = {"left": np.vstack([current[:6], targets[:, :6]]), "right": np.vstack([current[7:13], targets[:, 7:13]])}
    result: dict[str, Any] = {}
    for arm, planner in (("left", obj.left_planner), ("right", obj.right_planner)):
        try:
            _, pos, vel, _, _ = planner.TOPP(paths[arm], 1 / 250, verbose=True)
            result[arm] = (pos, vel) if len(pos) else None
        except Exception:
            result[arm] = None
    n_left = len(result["left"][0]) if result["left"] else 1
    n_right = len(result["right"][0]) if result["right"] else 1
    grips = {"left": np.linspace(targets[0, LEFT_GRIPPER], targets[-1, LEFT_GRIPPER], n_left),
             "right": np.linspace(targets[0, RIGHT_GRIPPER], targets[-1, RIGHT_GRIPPER], n_right)}
    ids = {"left": 0, "right": 0}
    counts = {"left": n_left, "right": n_right}
    joints = {"left": (obj.left_arm_joint_id, LEFT_GRIPPER_JOINTS), "right": (obj.right_arm_joint_id, RIGHT_GRIPPER_JOINTS)}
    done = 0
    while ids["left"] < n_left or ids["right"] < n_right:
        obj.robot.set_qf(obj.robot.compute_passive_force(gravity=True, coriolis_and_centrifugal=True))
        for arm, other in (("left", "right"), ("right", "left")):
            i = ids[arm]
            if i < counts[arm] and i / counts[arm] <= ids[other] / counts[other]:
                arm_ids, grip = joints[arm]
                if result[arm]:
                    for j, joint_id in enumerate(arm_ids):
                        obj.active_joints[joint_id].set_drive_target(result[arm][0][i][j])
                        obj.active_joints[joint_id].set_drive_velocity_target(result[arm][1][i][j])
                for joint in obj.active_joints[grip]:
                    joint.set_drive_target(grips[arm][i])
                    joint.set_drive_velocity_target(0.05)
                ids[arm] += 1
        obj.scene.step()
        reached = min(n, int(min(ids["left"] / n_left, ids["right"] / n_right) * n + 1e-9))
        success = bool(obj.check_success())
        if success:
            reached = max(reached, min(n, done + 1))
        while done < reached:
            done += 1
            if on_frame is not None:
                on_frame(render())
        if success:
            return done, True
    while done < n:
        done += 1
        if on_frame is not None:
            on_frame(render())
    return n, False
