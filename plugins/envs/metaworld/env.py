"""``MetaworldEnv``: Meta-World v3 tasks behind the Env contract, in the Meta-World venv.

One pushcut env holds one Meta-World env per task it has reset to (each task is its own MuJoCo
model), built on first use. Start state ``k`` of a task is its ``k``-th seeded variation from
Meta-World's own benchmark (``set_task``), so state and goal positions are exactly the
benchmark's. Actions are Meta-World's: 4 floats in [-1, 1] — ``dx, dy, dz`` move the end
effector's mocap target by 1 cm per unit, ``gripper`` closes (+1) or opens (-1). Success is
``info["success"]``, checked after every action (a chunk stops early at success).

Rendering: one GL context per (task, frame size) per process, shared by every env instance of
that task in the process (an instance renders its own ``MjData`` with it); shadows, reflections,
skybox and multisampling off (see :mod:`pushcut.mjrender`).
"""

from __future__ import annotations

import functools
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
from pushcut.plugins.envs.metaworld.config import INSTRUCTIONS, NUM_VARIATIONS, MetaworldConfig

SETUP_FIX = ("build the Meta-World venv with `bash scripts/setup-metaworld.sh` and point rollout.transport.python at its "
             "interpreter (docs/metaworld.md)")
WRIST_CAMERA = "gripperPOV"


def _import_metaworld() -> Any:
    try:
        import metaworld
    except ImportError as exc:
        raise EnvError(f"metaworld: Meta-World is not installed in this Python ({exc}); {SETUP_FIX}") from None
    return metaworld


@functools.lru_cache(maxsize=None)
def variations(source: str, seed: int, task: str) -> tuple[Any, ...]:
    """Meta-World's 50 seeded variations (``Task`` objects) of ``task`` from benchmark ``source``
    (MT10, MT50 or MT1), cached per process: building a benchmark resets every one of its envs 50 times."""
    metaworld = _import_metaworld()
    if source == "MT1":
        benchmark = metaworld.MT1(task, seed=seed)
    else:
        benchmark = _benchmark(source, seed)
    found = tuple(t for t in benchmark.train_tasks if t.env_name == task)
    if len(found) != NUM_VARIATIONS:
        raise EnvError(f"metaworld: {source} has {len(found)} variations of {task}, expected {NUM_VARIATIONS}; "
                       "install the Meta-World version scripts/setup-metaworld.sh pins")
    return found


@functools.lru_cache(maxsize=None)
def _benchmark(source: str, seed: int) -> Any:
    return getattr(_import_metaworld(), source)(seed=seed)


_renderers: dict[tuple[str, int, str], Any] = {}
"""(task, max frame size, gl backend) → SceneRenderer, shared by the env instances of a process."""


def _renderer(task: str, model: Any, size: int, backend: str) -> Any:
    from pushcut.mjrender import SceneRenderer

    key = (task, size, backend)
    if key not in _renderers:
        _renderers[key] = SceneRenderer(model, size, backend, who="metaworld")
    return _renderers[key]


class MetaworldEnv(Env):
    """Meta-World v3 tasks (``config.task_names``); see the module docstring."""

    def __init__(self, config: MetaworldConfig | None = None) -> None:
        self.config = config or MetaworldConfig()
        _import_metaworld()
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        from metaworld.policies import ENV_POLICY_MAP

        self._classes = ALL_V3_ENVIRONMENTS
        self._experts = ENV_POLICY_MAP
        train, evaluate = split_init_states(NUM_VARIATIONS, self.config.num_eval_init_states)
        self._tasks = [TaskSpec(name, INSTRUCTIONS[name], NUM_VARIATIONS, train, evaluate, self.config.max_steps)
                       for name in self.config.task_names]
        self._envs: dict[str, Any] = {}
        self._expert_of: dict[str, Any] = {}
        """Task → its scripted policy (stateless; built once, like the task's env)."""
        self._expert: Any = None
        self._env: Any = None
        self._task = ""
        self._init_state = -1
        self._raw: np.ndarray | None = None
        self._steps = 0
        self._cameras: dict[str, int] = {}

    # ------------------------------------------------------------------ the contract

    def tasks(self) -> list[TaskSpec]:
        return list(self._tasks)

    @property
    def action_spec(self) -> ActionSpec:
        return ActionSpec(4, (-1.0,) * 4, (1.0,) * 4)

    def reset(self, task_id: str, init_state: int) -> Observation:
        if task_id not in self.config.task_names:
            raise EnvError(f"metaworld: unknown task {task_id!r}; this env offers {', '.join(self.config.task_names)}")
        if not 0 <= int(init_state) < NUM_VARIATIONS:
            raise EnvError(f"metaworld: init_state {init_state} outside 0..{NUM_VARIATIONS - 1}")
        env = self._envs.get(task_id)
        if env is None:
            env = self._envs[task_id] = self._classes[task_id]()
        env.set_task(variations(self.config.variation_source, self.config.seed, task_id)[int(init_state)])
        self._raw, _ = env.reset()
        self._env, self._task, self._init_state, self._steps = env, task_id, int(init_state), 0
        if task_id not in self._expert_of:
            self._expert_of[task_id] = self._experts[task_id]()
        self._expert = self._expert_of[task_id]
        return self._observation()

    def step(self, actions: np.ndarray, record: bool = False) -> StepResult:
        if self._env is None:
            raise EnvError("metaworld: step() before reset()")
        chunk = np.clip(check_action_chunk(actions, 4, "metaworld", "(dx, dy, dz, gripper)"), -1.0, 1.0)
        frames: list[np.ndarray] = []
        executed, success = 0, False
        for action in chunk:
            if self._steps >= self.config.max_steps:
                break
            self._raw, _, _, _, info = self._env.step(action.astype(np.float32))
            self._steps += 1
            executed += 1
            if record:
                frames.append(self._frame(self.config.camera, self.config.video_size))
            success = bool(info["success"] > 0)
            if success:
                break
        return StepResult.after_chunk(self._observation(), executed, success, episode_steps=self._steps,
                                      budget=self.config.max_steps, task_id=self._task, init_state=self._init_state,
                                      frames=frames)

    def render(self) -> np.ndarray:
        if self._env is None:
            raise EnvError("metaworld: render() before reset()")
        return self._frame(self.config.camera, self.config.video_size)

    def expert_action(self) -> np.ndarray:
        """Meta-World's scripted policy for this task, on the full state observation."""
        if self._expert is None or self._raw is None:
            raise EnvError("metaworld: expert_action() before reset()")
        return np.clip(np.asarray(self._expert.get_action(self._raw), dtype=np.float64), -1.0, 1.0)

    def close(self) -> None:
        for env in self._envs.values():
            try:
                env.close()
            except Exception:
                pass
        self._envs.clear()
        self._env = None

    # ------------------------------------------------------------------ helpers

    def _observation(self) -> Observation:
        assert self._raw is not None
        obs: Observation = {OBS_IMAGE: self._frame(self.config.camera, self.config.image_size)}
        if self.config.wrist_camera:
            obs[OBS_WRIST_IMAGE] = self._frame(WRIST_CAMERA, self.config.image_size)
        # proprio: end-effector x, y, z (m) and the gripper opening, the first 4 entries of Meta-World's state;
        # with state_goal also the goal position, its last 3 (zero where the benchmark hides the goal)
        state = np.concatenate([self._raw[:4], self._raw[-3:]]) if self.config.state_goal else self._raw[:4]
        obs[OBS_STATE] = np.asarray(state, dtype=np.float32)
        return obs

    def _frame(self, camera: str, size: int) -> np.ndarray:
        import mujoco

        env = self._env
        key = f"{self._task}/{camera}"
        if key not in self._cameras:
            cam = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            if cam < 0:
                raise EnvError(f"metaworld: task {self._task} has no camera {camera!r}")
            self._cameras[key] = cam
        biggest = max(self.config.image_size, self.config.video_size)
        renderer = _renderer(self._task, env.model, biggest, self.config.gl_backend)
        return renderer.render(env.data, self._cameras[key], size)
