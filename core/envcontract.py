"""The Env contract and the data that crosses it, importable without torch.

A simulator's own virtualenv (``pushcut env serve``, a ``process`` worker on another
interpreter) imports this module, :mod:`pushcut.errors` and the simulator — never
torch. :mod:`pushcut.contracts` re-exports every name here, so plugins may import
either; an env plugin that must run without torch imports from this module.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from pushcut.errors import EnvError

Observation = dict[str, np.ndarray]
"""One env observation: ``image`` (H, W, 3) uint8, optional ``wrist_image``
(H, W, 3) uint8, optional ``state`` (D,) float32."""

OBS_IMAGE = "image"
OBS_WRIST_IMAGE = "wrist_image"
OBS_STATE = "state"

INFO_STAGE = "stage"
"""``StepResult.info`` key where an env reports the furthest of its task's ``stages`` the episode
has reached so far (:data:`NO_STAGE` before the first)."""
NO_STAGE = "none"

INFO_COUNTERS = "safety/"
"""Prefix of ``StepResult.info`` keys holding an episode's running intervention counts (a robot's
safety layer: ``safety/clipped_actions`` …); the trainer sums each over a round's episodes into
``rollout/safety/<name>``."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TaskSpec:
    """One task an env offers."""

    task_id: str
    """Stable identifier, unique within the env (e.g. ``push_red_cube``)."""
    instruction: str
    """The language instruction given to the policy."""
    num_init_states: int
    """How many stored initial states (or seeds) the task has."""
    train_init_states: tuple[int, ...]
    """Initial-state indices RL may train on."""
    eval_init_states: tuple[int, ...]
    """Held-out initial-state indices for evaluation (disjoint from train)."""
    max_steps: int
    """Env steps after which an unfinished episode counts as a failure."""
    stages: tuple[str, ...] = ()
    """Ordered milestones on the way to success (e.g. ``grasped``, ``lifted``) that the env reports
    in ``info["stage"]``, so an evaluation can tell where failed episodes stopped. Empty when the
    env reports none. A diagnostic only: the reward stays the binary success."""

    def __post_init__(self) -> None:
        overlap = set(self.train_init_states) & set(self.eval_init_states)
        if overlap:
            raise ValueError(
                f"task {self.task_id!r}: train and eval initial states overlap at {sorted(overlap)[:5]}"
            )
        bad = [i for i in (*self.train_init_states, *self.eval_init_states) if not 0 <= i < self.num_init_states]
        if bad:
            raise ValueError(
                f"task {self.task_id!r}: initial-state indices {bad[:5]} outside 0..{self.num_init_states - 1}"
            )
        if self.max_steps < 1:
            raise ValueError(f"task {self.task_id!r}: max_steps must be >= 1, got {self.max_steps}")
        if NO_STAGE in self.stages or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"task {self.task_id!r}: stages {list(self.stages)} must be distinct and must not "
                             f"include {NO_STAGE!r} (it means no stage reached)")


def split_init_states(num_init_states: int, num_eval: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Split ``range(num_init_states)`` into disjoint (train, eval) index tuples.

    The last ``num_eval`` states are held out, so growing the store never moves
    an eval state into the train split of an earlier run.
    """
    if not 0 <= num_eval <= num_init_states:
        raise ValueError(f"num_eval must be in 0..{num_init_states}, got {num_eval}")
    cut = num_init_states - num_eval
    return tuple(range(cut)), tuple(range(cut, num_init_states))


@dataclass(frozen=True)
class ActionSpec:
    """What one env step expects: ``action_dim`` floats in [low, high] (env units)."""

    action_dim: int
    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.low) != self.action_dim or len(self.high) != self.action_dim:
            raise ValueError(
                f"ActionSpec bounds must have action_dim={self.action_dim} entries, "
                f"got {len(self.low)} and {len(self.high)}"
            )


@dataclass
class StepResult:
    """What :meth:`Env.step` returns after executing (part of) an action chunk."""

    observation: Observation
    """Observation after the last executed action."""
    steps: int
    """How many actions of the chunk were executed (fewer than the chunk on early stop)."""
    success: bool
    """The env's own success flag after these steps."""
    done: bool
    """True when the episode cannot continue (success, or a terminal state)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Anything a success detector or logger may want (JSON-serialisable preferred)."""
    frames: list[np.ndarray] = field(default_factory=list)
    """Rendered frames, one per executed action, only when recording was requested."""

    @classmethod
    def after_chunk(cls, observation: Observation, steps: int, success: bool, *, episode_steps: int, budget: int,
                    task_id: str, init_state: int, frames: list[np.ndarray]) -> StepResult:
        """The result of a chunk in an env with a per-episode step budget: done at success or
        once ``budget`` steps are spent (``info["truncated"]``), with the info keys the core logs."""
        truncated = not success and episode_steps >= budget
        info = {"success": success, "task_id": task_id, "init_state": init_state, "episode_steps": episode_steps,
                "truncated": truncated}
        return cls(observation, steps, success, success or truncated, info, frames)


def check_action_chunk(actions: np.ndarray, action_dim: int, env_name: str, dims: str) -> np.ndarray:
    """``actions`` as a float64 (chunk, action_dim) array, or an EnvError naming what was expected
    (``dims`` spells out the action dimensions, e.g. ``"(dx, dy, dz, gripper)"``) and what came."""
    try:
        a = np.asarray(actions, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EnvError(f"{env_name}: actions must be a numeric (chunk, {action_dim}) array: {exc}") from None
    if a.ndim != 2 or a.shape[1] != action_dim or a.shape[0] < 1:
        raise EnvError(f"{env_name}: actions must have shape (chunk, {action_dim}) = {dims} per step, "
                       f"got {np.shape(actions)}")
    if not np.isfinite(a).all():
        rows = np.flatnonzero(~np.isfinite(a).all(axis=1)).tolist()
        raise EnvError(f"{env_name}: actions contain NaN or inf (chunk rows {rows})")
    return a


class Env(abc.ABC):
    """One simulator instance (or one robot).

    The core owns parallelism: it runs many instances of your Env in worker
    processes, so write a single, sequential env. Instances are created by the
    registered factory from your config dataclass, in the worker process.
    """

    deterministic: ClassVar[bool] = True
    """Same reset + same actions give the same observations (a simulator). A real robot sets it
    False: ``EnvContract`` then skips its determinism checks instead of failing them."""

    @abc.abstractmethod
    def tasks(self) -> list[TaskSpec]:
        """All tasks this env offers, with their initial-state splits."""

    @property
    @abc.abstractmethod
    def action_spec(self) -> ActionSpec:
        """The shape and bounds of one action, in env units."""

    @abc.abstractmethod
    def reset(self, task_id: str, init_state: int) -> Observation:
        """Reset to stored initial state ``init_state`` of ``task_id``; deterministic:
        the same arguments give the same state every time."""

    @abc.abstractmethod
    def step(self, actions: np.ndarray, record: bool = False) -> StepResult:
        """Execute an action chunk of shape (chunk, action_dim) in order, stopping
        early as soon as the task succeeds. With ``record``, return one rendered
        frame per executed action in ``StepResult.frames``."""

    @abc.abstractmethod
    def render(self) -> np.ndarray:
        """An RGB frame (H, W, 3) uint8 of the current state, for videos."""

    def close(self) -> None:
        """Release simulator resources. Called once when a worker shuts down."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def expert_action(self) -> np.ndarray:
        """Optional: a scripted expert's next action (action_dim,) for the current
        state of the episode started by the last :meth:`reset`. Envs that provide
        one can record demonstrations with ``pushcut demos``."""
        raise NotImplementedError(f"{type(self).__name__} has no scripted expert")


@runtime_checkable
class RestoresState(Protocol):
    """An optional Env capability: save and restore the full simulator state, so an episode can
    start part-way along a recorded demonstration (the reverse curriculum,
    ``train.curriculum=reverse``). An env has it when it defines both methods; the core checks
    with :func:`can_restore_state` (a worker tells its pool in its ``welcome``).

    The state is the env's own flat float64 vector (for a MuJoCo env: ``mj_getState`` of the
    integration state, plus whatever of the model the env changes per initial state); the core
    never looks inside it. ``pushcut demos`` stores it at every step of a demo (dataset
    ``data/demo_i/states``, LIBERO's own name for it), and the pool sends it back to a worker
    as a typed array in the ``reset`` request. Built in: tabletop, libero.

    An env whose observations after a step are not a function of the simulator state alone sets
    ``restores_observation = False`` (LIBERO: robosuite reads body positions one physics substep
    stale after a step, while a restore recomputes them): ``EnvContract`` then checks the state's
    round trip instead of the observation's.
    """

    def get_state(self) -> np.ndarray:
        """The current simulator state as a 1-D float64 array (what :meth:`restore_state` takes)."""
        ...

    def restore_state(self, task_id: str, state: np.ndarray) -> Observation:
        """Start a new episode of ``task_id`` at ``state`` (recorded by :meth:`get_state` in an episode
        of that task) and return its observation, equal to the one observed when it was recorded.
        The episode's step count restarts at 0 (it gets the task's full step budget). An EnvError
        naming what was expected when ``state`` does not fit this env."""
        ...


def can_restore_state(env: object) -> bool:
    """True when ``env`` offers the :class:`RestoresState` capability."""
    return isinstance(env, RestoresState)
