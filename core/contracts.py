"""The three contracts — Policy, Env, SuccessDetector — and the data that crosses them.

The engine is backbone- and simulator-agnostic because it only ever sees:

* observations: plain dicts of numpy arrays (`image`, optional `wrist_image`,
  `state`) plus an instruction string, batched as :class:`ObsBatch`;
* an :class:`ActionSample`: actions in env units, shape (B, chunk, action_dim),
  plus whatever the policy sampled (tokens, noise, latents) and the log-prob
  of each sampled element, shape (B, T), with a (B, T) mask.

For a token VLA, T = chunk × action_dim tokens (OpenVLA-OFT on LIBERO:
8 × 7 = 56); for a Gaussian head T counts action dims; for a diffusion head T
counts denoising steps. The engine never needs to know which.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

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

NO_WRIST_IMAGE_FIX = ("turn the env's wrist camera on, or for SFT name the demo files' wrist image key with "
                      "sft.wrist_image_key (pushcut's demo files: wrist_image, LIBERO's: eye_in_hand_rgb)")
"""Where wrist images come from: the end of a policy's error when it wants them and gets none."""


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


@dataclass
class ObsBatch:
    """A batch of B observations, as the policy sees them.

    Shapes: ``images`` (B, H, W, 3) uint8; ``wrist_images`` (B, H, W, 3) uint8
    or None; ``states`` (B, D) float32 or None; ``instructions`` and
    ``task_ids`` lists of length B.
    """

    images: np.ndarray
    instructions: list[str]
    task_ids: list[str]
    wrist_images: np.ndarray | None = None
    states: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        for name, value in (("instructions", self.instructions), ("task_ids", self.task_ids),
                            ("wrist_images", self.wrist_images), ("states", self.states)):
            if value is not None and len(value) != n:
                raise ValueError(f"ObsBatch: {name} has length {len(value)}, images has {n}")

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_observations(
        cls, observations: Sequence[Observation], instructions: Sequence[str], task_ids: Sequence[str]
    ) -> ObsBatch:
        """Stack per-env observation dicts into one batch."""
        if not observations:
            raise ValueError("ObsBatch.from_observations needs at least one observation")

        def stack(key: str) -> np.ndarray | None:
            present = [key in o for o in observations]
            if not any(present):
                return None
            if not all(present):
                raise ValueError(f"observation key {key!r} present in some observations but not all")
            return np.stack([o[key] for o in observations])

        images = stack(OBS_IMAGE)
        if images is None:
            raise ValueError(f"observations must contain {OBS_IMAGE!r}; got keys {sorted(observations[0])}")
        return cls(images=images, instructions=list(instructions), task_ids=list(task_ids),
                   wrist_images=stack(OBS_WRIST_IMAGE), states=stack(OBS_STATE))

    def select(self, index: Sequence[int] | np.ndarray) -> ObsBatch:
        """The sub-batch at ``index`` (a list of row indices)."""
        idx = np.asarray(index, dtype=np.int64)
        return ObsBatch(
            images=self.images[idx],
            instructions=[self.instructions[i] for i in idx],
            task_ids=[self.task_ids[i] for i in idx],
            wrist_images=None if self.wrist_images is None else self.wrist_images[idx],
            states=None if self.states is None else self.states[idx],
        )

    @staticmethod
    def concat(batches: Sequence[ObsBatch]) -> ObsBatch:
        """Concatenate batches row-wise."""
        if not batches:
            raise ValueError("ObsBatch.concat needs at least one batch")

        def cat(name: str) -> np.ndarray | None:
            values = [getattr(b, name) for b in batches]
            if all(v is None for v in values):
                return None
            if any(v is None for v in values):
                raise ValueError(f"ObsBatch.concat: {name} missing in some batches")
            return np.concatenate(values)

        return ObsBatch(
            images=cat("images"),
            instructions=[s for b in batches for s in b.instructions],
            task_ids=[s for b in batches for s in b.task_ids],
            wrist_images=cat("wrist_images"),
            states=cat("states"),
        )


@dataclass
class ActionSample:
    """What :meth:`Policy.act` returns for a batch of B observations.

    ``actions``: (B, chunk, action_dim) float32, env units — what the env executes.
    ``sample``: whatever the policy needs to re-score these actions later
    (token ids, noise, latents): a dict of tensors, each with leading dim B.
    ``log_probs``: (B, T) float32, detached, log-prob of each sampled element at
    the sampling temperature (zeros for greedy sampling).
    ``mask``: (B, T) bool, True where an element counts.
    """

    actions: np.ndarray
    sample: dict[str, torch.Tensor]
    log_probs: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.actions.ndim != 3:
            raise ValueError(f"ActionSample.actions must be (B, chunk, action_dim), got shape {self.actions.shape}")
        b = self.actions.shape[0]
        if self.log_probs.ndim != 2 or self.log_probs.shape[0] != b:
            raise ValueError(f"ActionSample.log_probs must be (B={b}, T), got shape {tuple(self.log_probs.shape)}")
        if tuple(self.mask.shape) != tuple(self.log_probs.shape):
            raise ValueError(
                f"ActionSample.mask shape {tuple(self.mask.shape)} != log_probs shape {tuple(self.log_probs.shape)}"
            )
        for key, value in self.sample.items():
            if value.shape[0] != b:
                raise ValueError(f"ActionSample.sample[{key!r}] has leading dim {value.shape[0]}, expected B={b}")

    def __len__(self) -> int:
        return self.actions.shape[0]

    def select(self, index: Sequence[int] | np.ndarray) -> ActionSample:
        """The sub-sample at ``index`` (row indices)."""
        idx = np.asarray(index, dtype=np.int64)
        tidx = torch.as_tensor(idx)
        return ActionSample(
            actions=self.actions[idx],
            sample={k: v[tidx] for k, v in self.sample.items()},
            log_probs=self.log_probs[tidx],
            mask=self.mask[tidx],
        )


@dataclass
class Scores:
    """What :meth:`Policy.log_probs` returns: differentiable (B, T) log-probs,
    and optionally the (B, T) entropy of the distribution each element was drawn from."""

    log_probs: torch.Tensor
    entropy: torch.Tensor | None = None


@dataclass
class EpisodeOutcome:
    """A finished episode, as a success detector sees it."""

    task_id: str
    instruction: str
    init_state: int
    env_success: bool
    """The env's own success flag at the end of the episode."""
    length: int
    """Env steps executed."""
    final_info: dict[str, Any] = field(default_factory=dict)
    frames: list[np.ndarray] = field(default_factory=list)
    """Rendered frames, when the detector asked for them (``needs_frames``)."""


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


# --------------------------------------------------------------------------- contracts


class Env(abc.ABC):
    """One simulator instance (or one robot).

    The core owns parallelism: it runs many instances of your Env in worker
    processes, so write a single, sequential env. Instances are created by the
    registered factory from your config dataclass, in the worker process.
    """

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


class Policy(torch.nn.Module, abc.ABC):
    """Maps observation batches to action chunks and scores its own samples.

    A Policy is a ``torch.nn.Module``: the engine trains
    :meth:`trainable_parameters` with AdamW and moves the module with ``.to()``.
    """

    chunk_size: int
    """Actions per chunk returned by :meth:`act`."""
    action_dim: int
    """Dimensions of one action."""

    @abc.abstractmethod
    def act(self, obs: ObsBatch, temperature: float) -> ActionSample:
        """Sample one action chunk per observation. ``temperature`` 0 means greedy.
        Must not build an autograd graph (the engine calls it under ``torch.no_grad``)."""

    @abc.abstractmethod
    def log_probs(self, obs: ObsBatch, sample: Mapping[str, torch.Tensor], temperature: float) -> Scores:
        """Differentiable (B, T) log-probs of the elements in ``sample`` under the
        current weights, at ``temperature``; equal to the sampling-time values
        while the weights are unchanged."""

    @abc.abstractmethod
    def sft_loss(self, obs: ObsBatch, expert_actions: np.ndarray) -> torch.Tensor:
        """Scalar behaviour-cloning loss for expert chunks (B, chunk, action_dim)."""

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """Parameters the optimiser updates (all with ``requires_grad`` by default)."""
        return (p for p in self.parameters() if p.requires_grad)

    @abc.abstractmethod
    def save(self, directory: Path) -> None:
        """Write weights and everything needed to rebuild the policy into ``directory``."""

    @abc.abstractmethod
    def load(self, directory: Path) -> None:
        """Load weights written by :meth:`save` into this policy, in place. Raise
        :class:`pushcut.errors.CheckpointError` naming what was expected and found
        when ``directory`` holds something else."""

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")


class SuccessDetector(abc.ABC):
    """Turns a finished episode into a binary outcome reward (0 or 1)."""

    needs_frames: ClassVar[bool] = False
    """Set True if :meth:`judge` reads ``EpisodeOutcome.frames`` (costs rendering)."""

    @abc.abstractmethod
    def judge(self, episode: EpisodeOutcome) -> bool:
        """True if the episode succeeded."""
