"""Which start states an RL round runs (recipe step 1), as a small registry of samplers.

``train.start_sampling`` names one of :data:`SAMPLERS`. A sampler draws
(task, train initial state) pairs, may learn from each round's outcomes
(:meth:`StartStateSampler.observe`), and saves its position in checkpoints so a
resumed run draws what the uninterrupted run would have. Torch-free: the config
validates names against this module.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pushcut.envcontract import TaskSpec
from pushcut.errors import ConfigError, EnvError


@dataclass(frozen=True)
class StartState:
    """Where an episode starts: a task and one of its stored initial states."""

    task_id: str
    init_state: int


class Outcome(Protocol):
    """What :meth:`StartStateSampler.observe` reads of an episode."""

    task_id: str
    init_state: int
    success: bool

    @property
    def ok(self) -> bool: ...


def mixed_group_chance(success: float, group_size: int) -> float:
    """Chance that ``group_size`` independent episodes with success rate ``success``
    are neither all failures nor all successes, i.e. that dynamic sampling keeps the group."""
    return 1.0 - success**group_size - (1.0 - success) ** group_size


class StartStateSampler(abc.ABC):
    """Draws (task, train initial state) pairs from ``tasks``; resumable."""

    def __init__(self, tasks: Sequence[TaskSpec], seed: int, group_size: int = 8) -> None:
        self.pairs = [StartState(t.task_id, s) for t in tasks for s in t.train_init_states]
        if not self.pairs:
            raise EnvError("the env's tasks have no train initial states to sample from")
        self.seed, self.group_size = seed, group_size
        self.states_of = {t.task_id: [p for p in self.pairs if p.task_id == t.task_id]
                          for t in tasks if t.train_init_states}

    @abc.abstractmethod
    def draw(self, n: int) -> list[StartState]:
        """The next ``n`` start states."""

    def observe(self, episodes: Iterable[Outcome]) -> None:
        """One round's outcomes (a sampler that adapts to them overrides this)."""

    @abc.abstractmethod
    def task_weights(self) -> dict[str, float]:
        """Probability of drawing each task next."""

    adaptive: bool = False
    """True when :meth:`task_weights` changes with the outcomes (then the trainer logs it)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class UniformSampler(StartStateSampler):
    """The recipe: cycles through every (task, train state) pair in shuffled order,
    reshuffling after each full pass."""

    def __init__(self, tasks: Sequence[TaskSpec], seed: int, group_size: int = 8) -> None:
        super().__init__(tasks, seed, group_size)
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(self.pairs))
        self.pos = 0

    def draw(self, n: int) -> list[StartState]:
        out = []
        for _ in range(n):
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(len(self.pairs)), 0
            out.append(self.pairs[self.order[self.pos]])
            self.pos += 1
        return out

    def task_weights(self) -> dict[str, float]:
        return {t: len(s) / len(self.pairs) for t, s in self.states_of.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "order": self.order.tolist(), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = np.asarray(state["order"], dtype=np.int64)
        self.pos = int(state["pos"])


class MixedSampler(StartStateSampler):
    """Picks each task with probability proportional to :func:`mixed_group_chance` of
    its running rollout success (an exponential average over rounds, fed by
    :meth:`observe`), floored at ``floor`` so that no task is starved; tasks not yet
    observed count as certain to mix. Within a task it cycles through the task's
    states in shuffled order. Dynamic sampling throws away groups that all fail or
    all succeed; this spends fewer rollouts on them in the first place."""

    adaptive = True

    def __init__(self, tasks: Sequence[TaskSpec], seed: int, group_size: int = 8, floor: float = 0.05,
                 smoothing: float = 0.5) -> None:
        super().__init__(tasks, seed, group_size)
        self.floor, self.smoothing = floor, smoothing
        # a stream of its own, so that the uniform sampler's draws do not depend on this one existing
        self.task_rng = np.random.default_rng([seed, 1])
        self.task_ids = list(self.states_of)
        self.task_orders = {t: self.task_rng.permutation(len(s)).tolist() for t, s in self.states_of.items()}
        self.task_pos = {t: 0 for t in self.task_ids}
        self.success: dict[str, float] = {}
        """Running rollout success per task."""

    def task_weights(self) -> dict[str, float]:
        raw = {t: max(self.floor, mixed_group_chance(self.success[t], self.group_size)) if t in self.success else 1.0
               for t in self.task_ids}
        total = sum(raw.values())
        return {t: w / total for t, w in raw.items()}

    def draw(self, n: int) -> list[StartState]:
        weights = self.task_weights()
        picks = self.task_rng.choice(len(self.task_ids), size=n, p=list(weights.values()))
        return [self._next_of(self.task_ids[i]) for i in picks]

    def _next_of(self, task_id: str) -> StartState:
        states, order = self.states_of[task_id], self.task_orders[task_id]
        if self.task_pos[task_id] == len(order):
            self.task_orders[task_id] = order = self.task_rng.permutation(len(states)).tolist()
            self.task_pos[task_id] = 0
        self.task_pos[task_id] += 1
        return states[order[self.task_pos[task_id] - 1]]

    def observe(self, episodes: Iterable[Outcome]) -> None:
        """Fold one round's outcomes into each task's running success."""
        finished = [ep for ep in episodes if ep.ok]
        for task in {ep.task_id for ep in finished}:
            rate = float(np.mean([ep.success for ep in finished if ep.task_id == task]))
            old = self.success.get(task)
            self.success[task] = rate if old is None else self.smoothing * old + (1.0 - self.smoothing) * rate

    def state_dict(self) -> dict[str, Any]:
        return {"task_rng": self.task_rng.bit_generator.state,
                "task_orders": {t: list(o) for t, o in self.task_orders.items()},
                "task_pos": dict(self.task_pos), "success": dict(self.success)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task_rng.bit_generator.state = state["task_rng"]
        self.task_orders = {t: list(o) for t, o in state["task_orders"].items()}
        self.task_pos = {t: int(p) for t, p in state["task_pos"].items()}
        self.success = {t: float(v) for t, v in state["success"].items()}


class BandSampler(StartStateSampler):
    """Draws the (task, start state) pairs whose estimated success lies inside (0, 1), the
    learnable band: a group from such a state is likely to have mixed outcomes, so dynamic
    sampling keeps it.

    Each pair's success is an exponential average of the rates its groups had (fed by
    :meth:`observe`, ``smoothing`` the weight of the old estimate). A draw weighs each pair
    by :func:`mixed_group_chance` of its estimate, floored at ``floor`` so that pairs last
    seen all-fail or all-success are revisited now and then (the policy changes); pairs
    never observed weigh 1, the most any pair can, so every state is explored before the
    estimates are trusted. One call draws distinct pairs while there are enough of them."""

    adaptive = True

    def __init__(self, tasks: Sequence[TaskSpec], seed: int, group_size: int = 8, floor: float = 0.02,
                 smoothing: float = 0.5) -> None:
        super().__init__(tasks, seed, group_size)
        self.floor, self.smoothing = floor, smoothing
        self.rng = np.random.default_rng([seed, 2])
        self.index = {p: i for i, p in enumerate(self.pairs)}
        self.success = np.full(len(self.pairs), np.nan)
        """Running success per pair (NaN: never observed)."""

    def weights(self) -> np.ndarray:
        """Unnormalised draw weight of every pair, in ``self.pairs`` order."""
        seen = ~np.isnan(self.success)
        p = np.where(seen, self.success, 0.5)
        mixed = 1.0 - p**self.group_size - (1.0 - p) ** self.group_size
        return np.where(seen, np.maximum(self.floor, mixed), 1.0)

    def draw(self, n: int) -> list[StartState]:
        out: list[StartState] = []
        while len(out) < n:
            w = self.weights()
            k = min(n - len(out), len(self.pairs))
            picks = self.rng.choice(len(self.pairs), size=k, replace=False, p=w / w.sum())
            out.extend(self.pairs[i] for i in picks)
        return out

    def observe(self, episodes: Iterable[Outcome]) -> None:
        """Fold each observed pair's group success rate into its running estimate."""
        rates: dict[int, list[bool]] = {}
        for ep in episodes:
            if ep.ok:
                key = self.index.get(StartState(ep.task_id, int(getattr(ep, "init_state", -1))))
                if key is not None:
                    rates.setdefault(key, []).append(bool(ep.success))
        for key, outcomes in rates.items():
            rate, old = float(np.mean(outcomes)), self.success[key]
            self.success[key] = rate if np.isnan(old) else self.smoothing * old + (1.0 - self.smoothing) * rate

    def task_weights(self) -> dict[str, float]:
        w = self.weights()
        total = float(w.sum())
        out = {t: 0.0 for t in self.states_of}
        for pair, weight in zip(self.pairs, w):
            out[pair.task_id] += float(weight) / total
        return out

    def in_band(self) -> float:
        """Share of observed pairs whose estimate lies strictly inside (0, 1) (NaN before any)."""
        seen = self.success[~np.isnan(self.success)]
        return float(np.mean((seen > 0) & (seen < 1))) if len(seen) else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "success": [None if np.isnan(v) else float(v) for v in self.success]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        if len(state["success"]) != len(self.pairs):
            raise EnvError(f"the band sampler's saved state covers {len(state['success'])} start states, the env "
                           f"offers {len(self.pairs)}: resume with the env the run started with")
        self.success = np.array([np.nan if v is None else float(v) for v in state["success"]], dtype=np.float64)


SAMPLERS: dict[str, type[StartStateSampler]] = {"uniform": UniformSampler, "mixed": MixedSampler, "band": BandSampler}
"""``train.start_sampling`` name → sampler class."""


def make_sampler(name: str, tasks: Sequence[TaskSpec], seed: int, group_size: int = 8) -> StartStateSampler:
    """The sampler ``train.start_sampling`` names, over ``tasks``' train initial states."""
    if name not in SAMPLERS:
        raise ConfigError(f"train.start_sampling must be one of {', '.join(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name](tasks, seed, group_size)
