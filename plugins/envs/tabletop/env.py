"""``TabletopEnv``: the :class:`pushcut.contracts.Env` over the MuJoCo tabletop scene."""

from __future__ import annotations

import numpy as np

from pushcut.envcontract import (
    check_action_chunk,
    INFO_STAGE,
    NO_STAGE,
    OBS_IMAGE,
    OBS_STATE,
    OBS_WRIST_IMAGE,
    ActionSpec,
    Env,
    Observation,
    StepResult,
    TaskSpec,
    split_init_states,
)
from pushcut.errors import EnvError
from pushcut.plugins.envs.tabletop.config import TabletopConfig
from pushcut.plugins.envs.tabletop.experts import Expert, make_expert
from pushcut.mjrender import SceneRenderer
from pushcut.plugins.envs.tabletop.scene import Layout, TabletopScene
from pushcut.plugins.envs.tabletop.tasks import TASK_IDS, TASKS, Task

ACTION_DIM = 4


class TabletopEnv(Env):
    """One tabletop simulator. Build it with ``TabletopEnv(TabletopConfig(...))``.

    The MuJoCo model is built here (so a worker process can construct it from a
    pickled config); the GL context is created on the first rendered frame and
    released by :meth:`close`.
    """

    def __init__(self, config: TabletopConfig | None = None) -> None:
        self.config = config if config is not None else TabletopConfig()
        self.scene = TabletopScene()
        """The physics (privileged state for experts and tests)."""
        train, evaluate = split_init_states(self.config.num_init_states, self.config.num_eval_init_states)
        self._specs = {
            t: TaskSpec(
                task_id=t,
                instruction=TASKS[t].instruction,
                num_init_states=self.config.num_init_states,
                train_init_states=train,
                eval_init_states=evaluate,
                max_steps=self.config.step_budget(t, TASKS[t].max_steps),
                stages=TASKS[t].stage_names,
            )
            for t in self.config.task_ids()
        }
        self._renderer: SceneRenderer | None = None
        self._task: Task | None = None
        self._init_state = -1
        self._steps = 0
        self._success = False
        self._layout: Layout | None = None
        self._stage = -1
        """Index into the task's stages of the furthest one reached this episode (-1: none)."""
        self._expert: Expert | None = None

    # ------------------------------------------------------------- contract

    def tasks(self) -> list[TaskSpec]:
        return list(self._specs.values())

    @property
    def action_spec(self) -> ActionSpec:
        return ActionSpec(ACTION_DIM, low=(-1.0,) * ACTION_DIM, high=(1.0,) * ACTION_DIM)

    def max_steps(self, task_id: str) -> int:
        """The step budget of ``task_id`` under this config."""
        return self._spec(task_id).max_steps

    def reset(self, task_id: str, init_state: int) -> Observation:
        spec = self._spec(task_id)
        if not 0 <= int(init_state) < spec.num_init_states:
            raise EnvError(
                f"tabletop: init_state {init_state} out of range for task {task_id!r}: "
                f"valid 0..{spec.num_init_states - 1} (env.num_init_states={spec.num_init_states})"
            )
        self._task = TASKS[task_id]
        self._init_state = int(init_state)
        self._layout = self._task.layout(self._init_state, self.config.jitter)
        self.scene.apply_layout(self._layout)
        self._stage = -1
        self._steps = 0
        self._success = bool(self._task.success(self.scene))
        self._expert = None
        return self.observe()

    def step(self, actions: np.ndarray, record: bool = False) -> StepResult:
        if self._task is None:
            raise EnvError("tabletop: step() called before reset(task_id, init_state)")
        actions = check_action_chunk(actions, ACTION_DIM, "tabletop", "(dx, dy, dz, gripper)")
        spec = self._specs[self._task.task_id]
        budget = spec.max_steps
        frames: list[np.ndarray] = []
        executed = 0
        for action in actions:
            if self._success or self._steps >= budget:
                break
            self.scene.step(action)
            self._steps += 1
            executed += 1
            self._success = bool(self._task.success(self.scene))
            self._stage = self._task.furthest_stage(self.scene, self._layout, self._stage)
            if record:
                frames.append(self.render())
        result = StepResult.after_chunk(self.observe(), executed, self._success, episode_steps=self._steps,
                                        budget=budget, task_id=self._task.task_id, init_state=self._init_state,
                                        frames=frames)
        result.info[INFO_STAGE] = spec.stages[self._stage] if self._stage >= 0 else NO_STAGE
        return result

    def get_state(self) -> np.ndarray:
        """The simulator state (see :class:`pushcut.envcontract.RestoresState`): the episode's init
        state index, then :meth:`TabletopScene.get_state` (static bodies + MuJoCo integration state)."""
        return np.concatenate([[float(self._init_state)], self.scene.get_state()])

    def restore_state(self, task_id: str, state: np.ndarray) -> Observation:
        """A new episode of ``task_id`` at a state :meth:`get_state` recorded; its step count starts at
        0, its stage at none (then whatever the restored scene already shows)."""
        spec = self._spec(task_id)
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        expected = 1 + self.scene.state_size()
        if len(state) != expected or not np.isfinite(state).all():
            raise EnvError(f"tabletop: a restored state must be {expected} finite floats (what get_state() "
                           f"returns for this scene), got {len(state)}; record the demos with this pushcut's tabletop")
        init_state = int(state[0])
        if not 0 <= init_state < spec.num_init_states:
            init_state = 0  # a state recorded from outside the stored ones: its layout only feeds stage reports
        self._task = TASKS[task_id]
        self._init_state = init_state
        self._layout = self._task.layout(init_state, self.config.jitter)
        self.scene.set_state(state[1:])
        self._steps = 0
        self._success = bool(self._task.success(self.scene))
        self._stage = self._task.furthest_stage(self.scene, self._layout, -1)
        self._expert = None
        return self.observe()

    def expert_action(self) -> np.ndarray:
        """The scripted expert's next action (4,) for the current episode (see
        :mod:`.experts`); its noise is ``config.expert_noise``, seeded by the init state."""
        if self._task is None:
            raise EnvError("tabletop: expert_action() called before reset(task_id, init_state)")
        if self._expert is None:
            self._expert = make_expert(self._task.task_id, noise=self.config.expert_noise, seed=self._init_state)
        return self._expert.act(self.scene)

    def render(self) -> np.ndarray:
        """The agentview camera at ``video_size`` px."""
        return self._render("agentview", self.config.video_size)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------- helpers

    def observe(self) -> Observation:
        """The current observation (``image``, optional ``wrist_image``, ``state``)."""
        obs: Observation = {OBS_IMAGE: self._render("agentview", self.config.image_size)}
        if self.config.wrist_camera:
            obs[OBS_WRIST_IMAGE] = self._render("wrist", self.config.image_size)
        obs[OBS_STATE] = self.scene.proprio()
        return obs

    @property
    def success(self) -> bool:
        """The success flag of the current episode."""
        return self._success

    def _render(self, camera: str, size: int) -> np.ndarray:
        if self._renderer is None:
            max_size = max(self.config.image_size, self.config.video_size)
            self._renderer = SceneRenderer(self.scene.model, max_size, self.config.gl_backend, who="tabletop")
        return self._renderer.render(self.scene.data, self.scene.camera_ids[camera], size)

    def _spec(self, task_id: str) -> TaskSpec:
        try:
            return self._specs[task_id]
        except KeyError:
            where = "" if task_id not in TASK_IDS else " (not selected in env.tasks)"
            raise EnvError(
                f"tabletop: unknown task {task_id!r}{where}; valid tasks: {', '.join(self._specs)}"
            ) from None

    def __del__(self) -> None:
        # Best effort: GL contexts left to interpreter shutdown can crash at exit.
        try:
            self.close()
        except Exception:
            pass
