"""``RobotwinEnv``: the :class:`pushcut.envcontract.Env` over RoboTwin 2.0's own task classes.

Runs inside the RoboTwin venv (a ``process`` worker on ``rollout.transport.python=.venv-robotwin/bin/python``
or ``pushcut env serve`` there). One instance offers every configured task; a reset rebuilds the
task's scene with ``setup_demo(seed)`` (RoboTwin seeds numpy and torch with it, so the same seed
gives the same scene), as RoboTwin's eval and RLinf's ``VectorEnv`` do.

A chunk of joint targets runs as **one planned path**, the way SimpleVLA-RL and RLinf patch
RoboTwin's ``take_action`` (RLinf's is ``gen_sparse_reward_data``): the current joints plus the
chunk's targets are time-parametrised together by each arm's TOPP, the grippers are interpolated
between consecutive targets over the path, and ``check_success`` runs after every physics step,
so a chunk stops the moment the task succeeds. Action ``j`` of a chunk of ``L`` is counted as
executed once both arms have covered ``(j + 1) / L`` of their paths.
"""

from __future__ import annotations

import json
import math
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
from pushcut.plugins.envs.robotwin import runtime
from pushcut.plugins.envs.robotwin.config import FALLBACK_INSTRUCTIONS_2_0, RobotwinConfig, SeedList
from pushcut.plugins.envs.robotwin.normalize import load_action_stats, minmax_bounds, unnormalize_minmax

UNSTABLE_SEED_STRIDE = 10007
"""A seed whose objects do not settle is replaced by seed + k * this (k = 1, 2, ...), far from the
next seeds of the list; RoboTwin's own loop tries seed + 1."""
UNSTABLE_SEED_TRIES = 5
TOPP_FAILED_STEPS = 50
"""Physics steps RoboTwin spends on an arm whose TOPP fails (it then holds the arm, moving only the gripper)."""
MAX_PATH_POINTS = 500
"""RoboTwin downsamples each arm's TOPP trajectory to at most this many physics steps per chunk."""

_task_info_cache: dict[tuple, tuple[str, int]] = {}


def read_seed_list(seeds_dir: str, task: str) -> SeedList:
    """The seed list `pushcut robotwin seeds` wrote for ``task`` in ``seeds_dir``."""
    path = Path(seeds_dir) / f"{task}.json"
    try:
        data = json.loads(path.read_text())
        seeds = tuple(int(s) for s in data["seeds"])
    except FileNotFoundError:
        raise EnvError(f"no seed list for {task} in {seeds_dir}: run `pushcut robotwin seeds {task} --n 100 --out "
                       f"{seeds_dir}` in the RoboTwin venv, or leave env.seeds_dir empty for the unverified range") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EnvError(f"{path} is not a seed list ({type(exc).__name__}: {exc}); rewrite it with "
                       "`pushcut robotwin seeds`") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise EnvError(f"{path} must list at least 2 distinct seeds, got {len(seeds)}")
    return SeedList(task, seeds, bool(data.get("verified", True)), {k: v for k, v in data.items() if k != "seeds"})


class RobotwinEnv(Env):
    """RoboTwin 2.0 tasks, 14 joint targets per step (left arm 6 + gripper, right arm 6 + gripper)."""

    def __init__(self, config: RobotwinConfig) -> None:
        if config.version != "2.0":
            raise EnvError("RobotwinEnv runs RoboTwin 2.0; env.version=1.0 is served by the 1.0 adapter")
        self.config = config
        self.root = runtime.check_all(config)
        self._seeds = self._seed_lists()
        self._task_obj: Any = None
        self._task_name = ""
        self._resets = 0
        self._episode_steps = 0
        self._budget = 0
        self._init_state = -1
        self._success = False
        self._instructions: dict[str, str] = {}
        self._step_limits: dict[str, int] = {}
        low, high = self._probe()
        self._joint_low, self._joint_high = low, high
        if config.action_normalization == "minmax":
            stats = load_action_stats(config.action_stats, config.action_stats_key) if config.action_stats else None
            self.bounds = stats or minmax_bounds(low, high)
            if len(self.bounds.low) != len(low):
                raise EnvError(f"env.action_stats has {len(self.bounds.low)}-dim bounds but the robot takes "
                               f"{len(low)} joint targets")
            dim = len(low)
            self._spec = ActionSpec(dim, (-1.0,) * dim, (1.0,) * dim)
        else:
            self.bounds = None
            self._spec = ActionSpec(len(low), tuple(float(v) for v in low), tuple(float(v) for v in high))

    # ------------------------------------------------------------------ set-up

    def _seed_lists(self) -> dict[str, SeedList]:
        c = self.config
        if c.seeds_dir:
            return {t: read_seed_list(c.seeds_dir, t) for t in c.tasks}
        seeds = tuple(range(c.seed_start, c.seed_start + c.num_init_states))
        return {t: SeedList(t, seeds, verified=False) for t in c.tasks}

    def _probe(self) -> tuple[np.ndarray, np.ndarray]:
        """Build each task once at its first train seed: its instruction and step limit, and the
        robot's joint limits (the action bounds)."""
        low = high = None
        for task in self.config.tasks:
            seed = self._seeds[task].seeds[0]
            key = (task, seed, self.config.embodiment, self.config.embodiment_config, str(self.root))
            self._setup(task, seed)
            info = self._episode_info()
            cached = _task_info_cache.get(key)
            if cached is None:
                text = runtime.instruction(task, info or {}, FALLBACK_INSTRUCTIONS_2_0.get(task, task.replace("_", " ")))
                cached = (text, int(self.config.step_limit(task) or self._task_obj.step_lim or 1000))
                _task_info_cache[key] = cached
            self._instructions[task], self._step_limits[task] = cached
            if low is None:
                low, high = self._joint_limits()
                # the first frame compiles SAPIEN's shaders (seconds, holding the GIL): here, while the
                # worker starts, not in the first reset, where it would silence the worker's heartbeat
                self._task_obj.get_obs()
        self._init_state = -1  # the probe is no episode
        return low, high

    def _episode_info(self) -> dict[str, str]:
        """The placeholders (``{A}: "red block"`` ...) RoboTwin's description generator fills in.
        Some tasks' ``get_info`` runs the scripted expert to learn which arm does what: where that
        fails (the stand-in assets) there are no placeholders and the instruction falls back."""
        try:
            info = self._task_obj.get_info()
        except Exception:
            return {}
        return {str(k): str(v) for k, v in info.items()} if isinstance(info, dict) else {}

    def _joint_limits(self) -> tuple[np.ndarray, np.ndarray]:
        robot = self._task_obj.robot
        lows, highs = [], []
        for joints in (robot.left_arm_joints, robot.right_arm_joints):
            for joint in joints:
                lo, hi = (float(v) for v in np.asarray(joint.get_limits()).reshape(-1)[:2])
                lows.append(lo if math.isfinite(lo) else -math.pi)
                highs.append(hi if math.isfinite(hi) else math.pi)
            lows.append(0.0)  # gripper: RoboTwin's normalised 0 (closed) .. 1 (open)
            highs.append(1.0)
        # RoboTwin orders the vector as left arm, left gripper, right arm, right gripper
        return np.asarray(lows), np.asarray(highs)

    def _setup(self, task: str, seed: int) -> int:
        """``setup_demo`` of ``task`` at ``seed`` (or the next stable stand-in seed); the seed used."""
        unstable = runtime.unstable_error()
        if self._task_obj is not None:
            self._resets += 1
            try:
                self._task_obj.close_env(clear_cache=self._resets % self.config.clear_cache_every == 0)
            except Exception:
                pass
        cls = runtime.task_class(task)
        args = runtime.setup_args(self.config, task, self.root)
        for k in range(UNSTABLE_SEED_TRIES):
            trial = seed + k * UNSTABLE_SEED_STRIDE
            obj = cls()
            runtime.prepare(obj, self.config)
            try:
                obj.setup_demo(now_ep_num=trial, seed=trial, is_test=True, **args)
            except unstable:
                try:
                    obj.close_env(clear_cache=True)
                except Exception:
                    pass
                continue
            except EnvError:
                raise
            except Exception as exc:
                raise EnvError(f"RoboTwin's {task}.setup_demo(seed={trial}) failed: {type(exc).__name__}: {exc}") from None
            self._task_obj, self._task_name = obj, task
            return trial
        raise EnvError(f"{task}: seed {seed} and {UNSTABLE_SEED_TRIES - 1} replacements give unstable scenes; "
                       "use a verified seed list (`pushcut robotwin seeds`)")

    # ------------------------------------------------------------------ contract

    def tasks(self) -> list[TaskSpec]:
        specs = []
        for task in self.config.tasks:
            n = len(self._seeds[task].seeds)
            num_eval = min(self.config.num_eval_init_states, n - 1)
            train, evaluate = split_init_states(n, num_eval)
            specs.append(TaskSpec(task, self._instructions[task], n, train, evaluate, self._step_limits[task]))
        return specs

    @property
    def action_spec(self) -> ActionSpec:
        return self._spec

    def seed_of(self, task_id: str, init_state: int) -> int:
        seeds = self._seeds[task_id].seeds
        if not 0 <= init_state < len(seeds):
            raise EnvError(f"{task_id}: initial state {init_state} outside 0..{len(seeds) - 1}")
        return seeds[init_state]

    def reset(self, task_id: str, init_state: int) -> Observation:
        if task_id not in self._seeds:
            raise EnvError(f"unknown RoboTwin task {task_id!r}; this env offers {', '.join(self.config.tasks)}")
        seed = self._setup(task_id, self.seed_of(task_id, init_state))
        self._seed = seed
        self._init_state = init_state
        self._episode_steps = 0
        self._budget = self._step_limits[task_id]
        self._success = False
        return self._observe()

    def step(self, actions: np.ndarray, record: bool = False) -> StepResult:
        if self._task_obj is None or self._init_state < 0:
            raise EnvError("step() before reset(): reset the env to a task and initial state first")
        chunk = check_action_chunk(actions, self._spec.action_dim, "robotwin",
                                   "(left arm joints, left gripper, right arm joints, right gripper)")
        if self._success or self._episode_steps >= self._budget:
            return StepResult.after_chunk(self._observe(), 0, self._success, episode_steps=self._episode_steps,
                                          budget=self._budget, task_id=self._task_name,
                                          init_state=self._init_state, frames=[])
        chunk = chunk[: self._budget - self._episode_steps]
        targets = self.to_joint_targets(chunk)
        frames: list[np.ndarray] = []
        steps, success = execute_chunk(self._task_obj, targets, frames.append if record else None, self.render)
        self._episode_steps += steps
        self._success = success
        self._task_obj.take_action_cnt = self._episode_steps
        self._task_obj.eval_success = success
        result = StepResult.after_chunk(self._observe(), steps, success, episode_steps=self._episode_steps,
                                        budget=self._budget, task_id=self._task_name, init_state=self._init_state,
                                        frames=frames)
        result.info["seed"] = self._seed
        return result

    def to_joint_targets(self, chunk: np.ndarray) -> np.ndarray:
        """Policy actions → RoboTwin joint targets: un-normalised from [-1, 1] with the min/max
        bounds under ``action_normalization=minmax``, then clipped to the joint limits."""
        if self.bounds is not None:
            chunk = unnormalize_minmax(self.bounds, chunk)
        return np.clip(chunk, self._joint_low, self._joint_high)

    def _observe(self) -> Observation:
        raw = self._task_obj.get_obs()
        cams = raw["observation"]
        obs: Observation = {OBS_IMAGE: self._image(cams["head_camera"]["rgb"]),
                            OBS_STATE: np.asarray(raw["joint_action"]["vector"], dtype=np.float32)}
        if self.config.wrist_camera:
            obs[OBS_WRIST_IMAGE] = self._image(cams["left_camera"]["rgb"])
        return obs

    def _image(self, frame: np.ndarray) -> np.ndarray:
        frame = np.ascontiguousarray(frame[..., :3], dtype=np.uint8)
        size = self.config.image_size
        if size and frame.shape[:2] != (size, size):
            import cv2

            frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
        return frame

    def render(self) -> np.ndarray:
        if self._task_obj is None:
            raise EnvError("render() before reset()")
        obj = self._task_obj
        obj._update_render()
        obj.cameras.update_picture()
        return np.ascontiguousarray(obj.cameras.get_rgb()["head_camera"]["rgb"][..., :3], dtype=np.uint8)

    def success(self) -> bool:
        """RoboTwin's own ``check_success`` on the current state."""
        return bool(self._task_obj.check_success())

    def close(self) -> None:
        if self._task_obj is not None:
            try:
                self._task_obj.close_env(clear_cache=True)
            except Exception:
                pass
            self._task_obj = None


# --------------------------------------------------------------------------- the chunk as one path


def _topp(planner: Any, path: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(positions, velocities) of mplib's TOPP through ``path`` at 250 Hz, at most
    MAX_PATH_POINTS of them (evenly picked, as RoboTwin does); None when TOPP fails."""
    try:
        _, pos, vel, _, _ = planner.TOPP(path, 1 / 250, verbose=True)
    except Exception:
        return None
    if len(pos) == 0:
        return None
    if len(pos) > MAX_PATH_POINTS:
        idx = np.unique(np.linspace(0, len(pos) - 1, MAX_PATH_POINTS).astype(int))
        pos, vel = pos[idx], vel[idx]
    return pos, vel


def _gripper_track(current: float, targets: np.ndarray, n_steps: int) -> np.ndarray:
    """(n_steps,) gripper values: the n_steps split as evenly as possible over the targets (the
    first ones one longer), each part a linear ramp from the previous target to its own."""
    k = len(targets)
    counts = [n_steps // k + (1 if i < n_steps % k else 0) for i in range(k)]
    points = np.concatenate([[current], targets])
    parts = [np.linspace(points[i], points[i + 1], counts[i] + 1)[1:] for i in range(k)]
    return np.concatenate(parts) if parts else np.zeros(0)


def execute_chunk(task: Any, targets: np.ndarray, on_frame: Any = None, render: Any = None) -> tuple[int, bool]:
    """Run joint ``targets`` (L, 14) on RoboTwin task ``task`` as one planned path; stop at the
    first physics step where ``check_success`` holds. Returns (actions executed, success); with
    ``on_frame``, calls it with ``render()`` once per executed action."""
    robot = task.robot
    left_now, right_now = robot.get_left_arm_jointState(), robot.get_right_arm_jointState()
    nl, nr = len(left_now) - 1, len(right_now) - 1
    if targets.shape[1] != nl + nr + 2:
        raise EnvError(f"robotwin: this robot takes {nl + nr + 2} joint targets per step, got {targets.shape[1]}")
    n_actions = len(targets)
    left_path = task.compress_path(np.vstack([np.asarray(left_now[:nl]), targets[:, :nl]]))
    right_path = task.compress_path(np.vstack([np.asarray(right_now[:nr]), targets[:, nl + 1:nl + 1 + nr]]))
    left = _topp(robot.left_mplib_planner, left_path)
    right = _topp(robot.right_mplib_planner, right_path)
    n_left = len(left[0]) if left else TOPP_FAILED_STEPS
    n_right = len(right[0]) if right else TOPP_FAILED_STEPS
    left_grip = _gripper_track(float(left_now[nl]), targets[:, nl], n_left)
    right_grip = _gripper_track(float(right_now[nr]), targets[:, nl + 1 + nr], n_right)

    i_left = i_right = 0
    done_actions = 0
    while i_left < n_left or i_right < n_right:
        if i_left < n_left and i_left / n_left <= i_right / n_right:
            if left:
                robot.set_arm_joints(left[0][i_left], left[1][i_left], "left")
            robot.set_gripper(left_grip[i_left], "left")
            i_left += 1
        if i_right < n_right and i_right / n_right <= i_left / n_left:
            if right:
                robot.set_arm_joints(right[0][i_right], right[1][i_right], "right")
            robot.set_gripper(right_grip[i_right], "right")
            i_right += 1
        task.scene.step()
        progress = min(i_left / n_left, i_right / n_right)
        reached = min(n_actions, int(math.floor(progress * n_actions + 1e-9)))
        success = bool(task.check_success())
        if success:
            reached = max(reached, min(n_actions, done_actions + 1))
        while done_actions < reached:
            done_actions += 1
            if on_frame is not None:
                on_frame(render())
        if success:
            return done_actions, True
    while done_actions < n_actions:  # rounding: the path is complete
        done_actions += 1
        if on_frame is not None:
            on_frame(render())
    return n_actions, False
