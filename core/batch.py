"""What rollouts produce and the update consumes: :class:`Episode` and :class:`EpisodeBatch`.

An episode holds, per policy step, what the policy saw and what it sampled (its (T,) row of
tokens / noise, log-probs at sampling time and mask); a batch holds episodes in groups (the
``group_size`` episodes run from one start state) and the tensors the update reads: (N,)
rewards and group index, (N,) advantages once computed, padded per-episode masks, and the
(episode, chunk) rows a micro-batch gathers. The update (:mod:`pushcut.learner`) sees only this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pushcut.contracts import Observation, ObsBatch
from pushcut.sampling import StartState


@dataclass
class Episode:
    """One finished (or failed) episode, with everything the update needs.

    Per policy step i (of ``num_chunks``): ``observations[i]`` (what the policy
    saw), row i of ``samples`` (tensors with leading dim ``num_chunks``), of
    ``log_probs`` (num_chunks, T) and of ``mask`` (num_chunks, T).
    """

    task_id: str
    instruction: str
    init_state: int
    group: int
    slot: int = -1
    """The env slot that ran it (see :meth:`EnvPool.worker_of`); -1 before it started."""
    observations: list[Observation] = field(default_factory=list)
    samples: dict[str, torch.Tensor] = field(default_factory=dict)
    log_probs: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    length: int = 0
    """Env steps executed."""
    env_success: bool = False
    success: bool = False
    """The success detector's verdict."""
    reward: float = 0.0
    failure: str | None = None
    """Why the episode is unusable (env crash, worker timeout, NaN); None if fine."""
    frames: list[np.ndarray] = field(default_factory=list)
    final_info: dict[str, Any] = field(default_factory=dict)
    start: StartState | None = field(default=None, repr=False)
    """Where it started; with a ``sim_state`` (the reverse curriculum) part-way along a demo."""
    _rows: list[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)

    @property
    def num_chunks(self) -> int:
        return len(self.observations)

    @property
    def ok(self) -> bool:
        return self.failure is None

    def add_step(self, observation: Observation, sample: dict[str, torch.Tensor], log_probs: torch.Tensor,
                 mask: torch.Tensor) -> None:
        """Record one policy step: what the policy saw and its (T,) sampled row."""
        self.observations.append(observation)
        self._rows.append((sample, log_probs, mask))

    def _finalize(self) -> None:
        if self._rows:
            keys = self._rows[0][0].keys()
            self.samples = {k: torch.stack([r[0][k] for r in self._rows]) for k in keys}
            self.log_probs = torch.stack([r[1] for r in self._rows])
            self.mask = torch.stack([r[2] for r in self._rows])
        self._rows = []


@dataclass
class EpisodeBatch:
    """Episodes in groups, as rollout returns them and the update consumes them.

    Every group is the ``group_size`` episodes run from one start state; an episode
    names its group (:attr:`Episode.group`), so groups are found by that, never by
    position. The batch owns the tensors the update needs: (N,) rewards, (N,) group
    index, (N,) advantages once computed, padded per-episode masks and the (episode,
    chunk) rows a micro-batch gathers.
    """

    episodes: list[Episode]
    group_size: int
    advantages: torch.Tensor | None = None
    """(N,) one per episode, set by :meth:`with_advantages`."""

    def __len__(self) -> int:
        return len(self.episodes)

    def __iter__(self):
        return iter(self.episodes)

    def __getitem__(self, k: int) -> Episode:
        return self.episodes[k]

    @staticmethod
    def concat(batches: Sequence[EpisodeBatch], group_size: int) -> EpisodeBatch:
        return EpisodeBatch([ep for b in batches for ep in b.episodes], group_size)

    # ----------------------------------------------------------------- groups

    def groups(self) -> list[list[Episode]]:
        """Episodes by group, groups in the order they first appear."""
        by_group: dict[int, list[Episode]] = {}
        for ep in self.episodes:
            by_group.setdefault(ep.group, []).append(ep)
        return list(by_group.values())

    @property
    def num_groups(self) -> int:
        return len({ep.group for ep in self.episodes})

    def group_index(self) -> torch.Tensor:
        """(N,) int64: each episode's group, numbered 0.. in order of appearance."""
        ids: dict[int, int] = {}
        return torch.tensor([ids.setdefault(ep.group, len(ids)) for ep in self.episodes], dtype=torch.int64)

    def rewards(self) -> torch.Tensor:
        """(N,) float32 outcome rewards."""
        return torch.tensor([ep.reward for ep in self.episodes], dtype=torch.float32)

    def usable(self) -> EpisodeBatch:
        """Only the groups none of whose episodes failed (a group's advantages need all of it)."""
        return EpisodeBatch([ep for g in self.groups() if all(ep.ok for ep in g) for ep in g], self.group_size)

    def select(self, keep: torch.Tensor) -> EpisodeBatch:
        """The episodes where the (N,) bool ``keep`` is true (a per-group mask keeps whole groups)."""
        return EpisodeBatch([ep for ep, k in zip(self.episodes, keep.tolist()) if k], self.group_size)

    def first_groups(self, n: int) -> EpisodeBatch:
        """The first ``n`` groups."""
        return EpisodeBatch([ep for g in self.groups()[:n] for ep in g], self.group_size)

    def with_advantages(self, advantages: torch.Tensor) -> EpisodeBatch:
        if advantages.shape != (len(self),):
            raise ValueError(f"advantages of shape {tuple(advantages.shape)} for {len(self)} episodes")
        return EpisodeBatch(self.episodes, self.group_size, advantages)

    @property
    def finished(self) -> list[Episode]:
        """The episodes that ran to the end and were judged (not lost)."""
        return [ep for ep in self.episodes if ep.ok]

    # ----------------------------------------------------------------- rows for the update

    @property
    def token_len(self) -> int:
        """T, the length of one chunk's log-prob row."""
        return int(self.episodes[0].mask.shape[1])

    def episode_mask(self, picks: Sequence[int]) -> torch.Tensor:
        """(len(picks), max chunks · T) bool: each picked episode's mask, its chunks laid end
        to end and padded; a "sequence" of the loss aggregation is one episode."""
        t_len = self.token_len
        max_chunks = max(self.episodes[e].num_chunks for e in picks)
        out = torch.zeros(len(picks), max_chunks * t_len, dtype=torch.bool)
        for i, e in enumerate(picks):
            out[i, : self.episodes[e].num_chunks * t_len] = self.episodes[e].mask.reshape(-1)
        return out

    def rows(self, picks: Sequence[int]) -> list[tuple[int, int]]:
        """Every (episode, chunk) row of the picked episodes, as (index into picks, chunk)."""
        return [(i, r) for i, e in enumerate(picks) for r in range(self.episodes[e].num_chunks)]

    def gather(self, rows: Sequence[tuple[int, int]]) -> tuple[ObsBatch, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """(episode, chunk) rows as one policy batch: observations, sampled tensors,
        (R, T) sampling-time log-probs and (R, T) masks."""
        eps = self.episodes
        obs = ObsBatch.from_observations([eps[e].observations[r] for e, r in rows],
                                         [eps[e].instruction for e, _ in rows], [eps[e].task_id for e, _ in rows])
        keys = eps[rows[0][0]].samples.keys()
        sample = {k: torch.stack([eps[e].samples[k][r] for e, r in rows]) for k in keys}
        old = torch.stack([eps[e].log_probs[r] for e, r in rows])
        mask = torch.stack([eps[e].mask[r] for e, r in rows])
        return obs, sample, old, mask
