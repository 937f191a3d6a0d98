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
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from pushcut.envcontract import (  # noqa: F401  (the torch-free half of the contracts)
    INFO_COUNTERS,
    INFO_STAGE,
    NO_STAGE,
    OBS_IMAGE,
    OBS_STATE,
    OBS_WRIST_IMAGE,
    ActionSpec,
    Env,
    Observation,
    RestoresState,
    StepResult,
    TaskSpec,
    can_restore_state,
    check_action_chunk,
    split_init_states,
)

NO_WRIST_IMAGE_FIX = ("turn the env's wrist camera on, or for SFT name the demo files' wrist image key with "
                      "sft.wrist_image_key (pushcut's demo files: wrist_image, LIBERO's: eye_in_hand_rgb)")
"""Where wrist images come from: the end of a policy's error when it wants them and gets none."""


# --------------------------------------------------------------------------- data


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
    and optionally the (B, T) entropy of the distribution each element was drawn from,
    and (a policy with a value head, see :class:`ValueHead`) the differentiable (B,)
    values of the same observations from the same forward pass, which spares the
    PPO update a second pass."""

    log_probs: torch.Tensor
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None


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


# --------------------------------------------------------------------------- contracts


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

    def shard_units(self) -> list[torch.nn.Module]:
        """The repeated blocks a sharded learner (``train.strategy=fsdp2``) shards one by one,
        gathering one unit's weights at a time: a transformer's decoder layers, a ViT's blocks.
        Parameters outside every unit form one more unit with the policy itself. Empty (the
        default): the whole policy is one unit, gathered whole for each forward."""
        return []

    def describe(self) -> dict[str, Any]:
        """Settings the built policy resolved that a person checking its actions wants to see,
        as JSON-safe values (``pushcut predict`` prints them beside the chunk): e.g. OpenVLA's
        dataset key and decoding mode. Default: none."""
        return {}

    # Optional capability, not declared here so that having it can be detected:
    # ``values(obs) -> (B,)`` and ``value_parameters()``, see :class:`ValueHead`.

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")


@runtime_checkable
class ValueHead(Protocol):
    """An optional Policy capability: a critic on the policy's own features, for PPO with
    GAE (``algo.advantage=gae``). A policy has it when it defines both methods; the
    engine checks with ``isinstance(policy, ValueHead)`` and refuses ``gae`` otherwise.

    The critic values the observation a chunk is chosen from: V(s) is the expected
    (discounted) success of the episode from there. It is trained by the engine with
    its own learning rate (``algo.critic.lr``) on :meth:`value_parameters`; a policy
    may feed the head detached features so that the value loss never moves the actor.
    """

    def values(self, obs: ObsBatch) -> torch.Tensor:
        """Differentiable (B,) float values, one per observation (under ``torch.no_grad``
        the engine uses them as the rollout-time values)."""
        ...

    def value_parameters(self) -> Iterable[torch.nn.Parameter]:
        """The value head's own parameters. When a run trains a critic the engine turns
        their gradients on and gives them ``algo.critic.lr``, whether or not
        ``trainable_parameters()`` lists them (a policy may keep its head frozen, and out
        of its trainable parameters, for runs without a critic)."""
        ...


def has_value_head(policy: object) -> bool:
    """True when ``policy`` offers the :class:`ValueHead` capability."""
    return isinstance(policy, ValueHead)


class SuccessDetector(abc.ABC):
    """Turns a finished episode into a binary outcome reward (0 or 1)."""

    needs_frames: ClassVar[bool] = False
    """Set True if :meth:`judge` reads ``EpisodeOutcome.frames`` (costs rendering)."""

    @abc.abstractmethod
    def judge(self, episode: EpisodeOutcome) -> bool:
        """True if the episode succeeded."""

    def judge_all(self, episodes: Sequence[EpisodeOutcome]) -> list[bool | None]:
        """Verdicts for a round of finished episodes, in order. The collector calls this
        once per round, after every episode of it has finished, so a slow judge (a
        human operator, a remote model) never stalls the env lanes. ``None`` means
        *unjudged* (e.g. the operator did not answer in time): that episode is dropped
        and counted, never scored as a failure. The default calls :meth:`judge` on each;
        override it to ask for all verdicts at once and wait for them together."""
        return [bool(self.judge(e)) for e in episodes]

    def close(self) -> None:
        """Release what the detector holds (a web page, a model); called once where the run's env
        pool closes. Does nothing by default."""
