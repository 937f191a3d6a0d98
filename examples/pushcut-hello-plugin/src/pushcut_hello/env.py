"""``hello_line``: move a dot along a line until it reaches the target.

The world is one number, the dot's position ``x`` in [-1, 1]. Each task has a
fixed target; one action is a single float in [-1, 1] that moves the dot by
``action * step_size``. The observation is a small rendered image (the line, the
target in green, the dot in red) plus ``state = [x, target]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pushcut.contracts import ActionSpec, Env, Observation, StepResult, TaskSpec, split_init_states
from pushcut.errors import ConfigError, EnvError

# task id -> (instruction, target position)
TASKS: dict[str, tuple[str, float]] = {
    "move_left": ("move the dot to the left", -0.75),
    "move_right": ("move the dot to the right", 0.75),
}


@dataclass
class HelloLineConfig:
    """Options of the ``hello_line`` env (the keys under ``env:`` besides ``type``)."""

    num_init_states: int = 8
    """Stored start positions per task, spread over [-0.5, 0.5]."""
    num_eval: int = 2
    """How many of them (the last ones) are held out for evaluation."""
    max_steps: int = 20
    """Env steps after which an unfinished episode is a failure."""
    step_size: float = 0.1
    """How far one action of magnitude 1 moves the dot."""
    tolerance: float = 0.1
    """The task succeeds when the dot is this close to the target."""
    image_size: int = 16
    """Side of the square observation image, in pixels."""

    def __post_init__(self) -> None:
        if self.num_init_states < 2:
            raise ConfigError(f"env.num_init_states must be >= 2 (train and eval need one each), got {self.num_init_states}")
        if not 1 <= self.num_eval < self.num_init_states:
            raise ConfigError(
                f"env.num_eval must be in 1..{self.num_init_states - 1} (num_init_states - 1), got {self.num_eval}"
            )
        if self.max_steps < 1:
            raise ConfigError(f"env.max_steps must be >= 1, got {self.max_steps}")
        if self.step_size <= 0 or self.tolerance <= 0:
            raise ConfigError(f"env.step_size and env.tolerance must be > 0, got {self.step_size} and {self.tolerance}")
        if self.image_size < 8:
            raise ConfigError(f"env.image_size must be >= 8 pixels, got {self.image_size}")


class HelloLineEnv(Env):
    """A single, sequential env; pushcut runs many of them in worker processes."""

    def __init__(self, config: HelloLineConfig) -> None:
        self.config = config
        train, held_out = split_init_states(config.num_init_states, config.num_eval)
        self._tasks = [
            TaskSpec(task_id, instruction, config.num_init_states, train, held_out, config.max_steps)
            for task_id, (instruction, _) in TASKS.items()
        ]
        self._starts = np.linspace(-0.5, 0.5, config.num_init_states)
        self._spec = ActionSpec(action_dim=1, low=(-1.0,), high=(1.0,))
        self._x = 0.0
        self._target: float | None = None

    def tasks(self) -> list[TaskSpec]:
        return list(self._tasks)

    @property
    def action_spec(self) -> ActionSpec:
        return self._spec

    def reset(self, task_id: str, init_state: int) -> Observation:
        if task_id not in TASKS:
            raise EnvError(f"hello_line has no task {task_id!r}; tasks: {', '.join(TASKS)}")
        if not 0 <= init_state < self.config.num_init_states:
            raise EnvError(f"hello_line: init_state must be in 0..{self.config.num_init_states - 1}, got {init_state}")
        self._target = TASKS[task_id][1]
        self._x = float(self._starts[init_state])
        return self._observe()

    def step(self, actions: np.ndarray, record: bool = False) -> StepResult:
        if self._target is None:
            raise EnvError("hello_line: call reset() before step()")
        actions = np.asarray(actions, dtype=np.float32)
        dim = self._spec.action_dim
        if actions.ndim != 2 or actions.shape[1] != dim or len(actions) == 0:
            raise EnvError(
                f"hello_line expects an action chunk of shape (chunk, action_dim={dim}), got {actions.shape}"
            )
        frames: list[np.ndarray] = []
        steps, success = 0, False
        for action in actions:
            delta = float(np.clip(action[0], -1.0, 1.0)) * self.config.step_size
            self._x = float(np.clip(self._x + delta, -1.0, 1.0))
            steps += 1
            if record:
                frames.append(self.render())
            success = self._success()
            if success:  # early stop: the rest of the chunk is not executed
                break
        return StepResult(
            observation=self._observe(),
            steps=steps,
            success=success,
            done=success,
            info={"x": self._x, "target": self._target, "success": success},
            frames=frames,
        )

    def get_state(self) -> np.ndarray:
        """Optional: the whole world as a flat float array (here, the dot's position), so that
        ``pushcut demos`` stores it along each demonstration and the reverse curriculum
        (``train.curriculum=reverse``) can start episodes part-way along one."""
        return np.array([self._x], dtype=np.float64)

    def restore_state(self, task_id: str, state: np.ndarray) -> Observation:
        """Optional, with :meth:`get_state`: a new episode of ``task_id`` from a recorded state."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (1,) or not np.isfinite(state).all():
            raise EnvError(f"hello_line: a state is [x] (one finite number), got shape {state.shape}")
        self.reset(task_id, 0)
        self._x = float(np.clip(state[0], -1.0, 1.0))
        return self._observe()

    def expert_action(self) -> np.ndarray:
        """A scripted expert: head for the target at full speed (no overshoot). Optional: it lets
        ``pushcut demos`` record demonstrations and ``EnvContract`` check early stop."""
        if self._target is None:
            raise EnvError("hello_line: expert_action() before reset()")
        return np.array([np.clip((self._target - self._x) / self.config.step_size, -1.0, 1.0)], dtype=np.float32)

    def render(self) -> np.ndarray:
        n = self.config.image_size
        img = np.full((n, n, 3), 32, dtype=np.uint8)
        mid = n // 2
        img[mid, :, :] = 128  # the line
        if self._target is not None:
            img[mid - 2 : mid + 3, self._column(self._target)] = (0, 200, 0)
        img[mid - 1 : mid + 2, self._column(self._x)] = (230, 30, 30)
        return img

    def _column(self, position: float) -> int:
        n = self.config.image_size
        return int(round((position + 1.0) / 2.0 * (n - 1)))

    def _success(self) -> bool:
        return abs(self._x - self._target) <= self.config.tolerance

    def _observe(self) -> Observation:
        return {
            "image": self.render(),
            "state": np.array([self._x, self._target], dtype=np.float32),
        }
