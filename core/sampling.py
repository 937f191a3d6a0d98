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
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pushcut.envcontract import TaskSpec
from pushcut.errors import ConfigError, EnvError


@dataclass(frozen=True)
class StartState:
    """Where an episode starts: a task and one of its stored initial states, or (the reverse
    curriculum) a simulator state recorded along one of the task's demonstrations."""

    task_id: str
    init_state: int
    sim_state: np.ndarray | None = field(default=None, compare=False, repr=False)
    """A recorded simulator state (1-D float64) to start from instead of ``init_state``; the env
    restores it (:class:`pushcut.envcontract.RestoresState`). ``init_state`` is then the demo's own."""
    demo: DemoStart | None = field(default=None, compare=False)
    """Which demo step ``sim_state`` is (None for a real initial state)."""


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

    def begin(self, collector: Any, at_start: dict[str, float] | None) -> None:
        """Called once before a fresh run's first iteration (not on resume), with the collector and
        the step-0 evaluation's metrics (None when ``train.eval_at_start`` is off). Does nothing by
        default; the reverse curriculum enrols its tasks here."""

    def metrics(self) -> dict[str, float]:
        """What the trainer logs of the sampler after each rollout (none by default)."""
        return {}

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


@dataclass(frozen=True)
class DemoStart:
    """A start part-way along a demonstration: restore the simulator state recorded at ``step``
    of demo ``demo`` of ``task_id`` (step 0 is the demo's own initial state)."""

    task_id: str
    demo: int
    step: int


class ReverseCurriculum:
    """Reverse curriculum from demonstrations (after Florensa et al. 2017, arXiv:1707.05300, with
    demo states as the start distribution): per task, episodes start from states recorded along
    the task's demonstrations, at ``start_fraction`` of the way to their end, and the start moves
    back by ``step`` each time the running success from the current start reaches ``threshold``,
    until it reaches the demo's beginning (fraction 0); from then on the task trains from its real
    initial states. Only tasks whose success from the real start is below ``apply_below`` are
    enrolled; the others start at 0 (today's training).

    Pure bookkeeping: which demo state an episode starts from, and how the start moves. Running
    it needs an env that restores recorded simulator states and demo files that carry them (see
    docs/algorithms.md, "Reverse curriculum")."""

    def __init__(self, demo_lengths: dict[str, Sequence[int]], seed: int, threshold: float = 0.5,
                 step: float = 0.2, initial: float = 0.8, apply_below: float = 0.3, smoothing: float = 0.5) -> None:
        for name, value in (("threshold", threshold), ("apply_below", apply_below)):
            if not 0 < value < 1:
                raise ConfigError(f"curriculum {name} must be in (0, 1), got {value}")
        if not 0 < step <= 1 or not 0 <= initial <= 1:
            raise ConfigError(f"curriculum step must be in (0, 1] and initial in [0, 1], got {step} and {initial}")
        empty = sorted(t for t, lengths in demo_lengths.items() if not lengths or min(lengths) < 1)
        if empty:
            raise ConfigError(f"the reverse curriculum needs at least one recorded demo state per task; "
                              f"none for {', '.join(empty)}")
        self.demo_lengths = {t: list(v) for t, v in demo_lengths.items()}
        self.threshold, self.step, self.initial = threshold, step, initial
        self.apply_below, self.smoothing = apply_below, smoothing
        self.rng = np.random.default_rng([seed, 3])
        self.start_fraction = {t: 0.0 for t in demo_lengths}
        """Share of the demonstration already done where episodes start; 0 = the task's real initial states."""
        self.success: dict[str, float] = {}
        """Running success from each task's current start."""

    def enroll(self, success_from_real_start: dict[str, float]) -> None:
        """Start every task whose success from its real initial states is below ``apply_below``
        at ``initial``; the others stay at 0."""
        for task, rate in success_from_real_start.items():
            if task in self.start_fraction and rate < self.apply_below:
                self.start_fraction[task] = self.initial
                self.success.pop(task, None)

    def active(self, task_id: str) -> bool:
        """True while ``task_id``'s episodes start along its demos rather than from real initial states."""
        return self.start_fraction.get(task_id, 0.0) > 0

    def draw(self, task_id: str, n: int) -> list[DemoStart]:
        """``n`` starts of an active task: a random demo each, at the current fraction of its length."""
        if not self.active(task_id):
            raise ValueError(f"task {task_id!r} is not in the curriculum (it starts from its real initial states)")
        lengths = self.demo_lengths[task_id]
        demos = self.rng.integers(len(lengths), size=n)
        return [DemoStart(task_id, int(d), int(round(self.start_fraction[task_id] * (lengths[d] - 1))))
                for d in demos]

    def observe(self, task_id: str, successes: Sequence[bool]) -> None:
        """Outcomes of episodes started from ``task_id``'s current start; moves the start back
        once their running success reaches the threshold (the estimate restarts there)."""
        if not self.active(task_id) or not len(successes):
            return
        rate, old = float(np.mean(successes)), self.success.get(task_id)
        self.success[task_id] = rate if old is None else self.smoothing * old + (1 - self.smoothing) * rate
        if self.success[task_id] >= self.threshold:
            self.start_fraction[task_id] = max(0.0, round(self.start_fraction[task_id] - self.step, 10))
            self.success.pop(task_id)

    def metrics(self) -> dict[str, float]:
        return {f"curriculum/{t}/start_fraction": f for t, f in sorted(self.start_fraction.items())}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "start_fraction": dict(self.start_fraction),
                "success": dict(self.success)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.start_fraction = {t: float(v) for t, v in state["start_fraction"].items()}
        self.success = {t: float(v) for t, v in state["success"].items()}


ENROL_STATES = 20
"""Train initial states per task that the reverse curriculum's enrolment measures greedily (one
episode each) when the run has no step-0 evaluation to read; the states its demos start from are
left out (a policy cloned from those demos solves them more often than the others)."""


class CurriculumSampler(StartStateSampler):
    """``base`` (any start-state sampler) with the reverse curriculum on top: a start ``base`` draws
    for a task the curriculum holds (:meth:`ReverseCurriculum.active`) becomes a start part-way
    along one of that task's demos (a :class:`StartState` carrying the recorded simulator state);
    the outcomes of those episodes move the curriculum, the others feed ``base``.

    Enrolment (:meth:`begin`, once at the start of a fresh run): a task enrols when its success
    from the real initial states is below ``apply_below``: the step-0 evaluation's
    ``eval/success/<task>`` when there is one, else a greedy episode from each of its first
    :data:`ENROL_STATES` train initial states that no demo starts from."""

    def __init__(self, base: StartStateSampler, curriculum: ReverseCurriculum,
                 demos: dict[str, list[tuple[int, np.ndarray]]]) -> None:
        self.base, self.curriculum, self.demos = base, curriculum, demos
        self.pairs, self.states_of = base.pairs, base.states_of
        self.seed, self.group_size = base.seed, base.group_size
        self.adaptive = base.adaptive
        self.started = False
        self.enrolment: dict[str, float] = {}
        """Success from the real start that each task's enrolment read."""

    def begin(self, collector: Any, at_start: dict[str, float] | None) -> None:
        if self.started:
            return
        tasks = list(self.curriculum.demo_lengths)
        if at_start is not None and all(f"eval/success/{t}" in at_start for t in tasks):
            rates = {t: float(at_start[f"eval/success/{t}"]) for t in tasks}
        else:
            demo_starts = {(t, init) for t, demos in self.demos.items() for init, _ in demos}
            starts = [p for t in tasks
                      for p in [q for q in self.states_of.get(t, []) if (t, q.init_state) not in demo_starts][:ENROL_STATES]]
            batch, _ = collector.collect(starts, 1, 0.0)
            done = [ep for ep in batch if ep.ok]
            rates = {t: float(np.mean([ep.success for ep in done if ep.task_id == t]))
                     for t in tasks if any(ep.task_id == t for ep in done)}
        self.enrolment = rates
        self.curriculum.enroll(rates)
        self.started = True

    def draw(self, n: int) -> list[StartState]:
        out = []
        for start in self.base.draw(n):
            if self.curriculum.active(start.task_id):
                demo = self.curriculum.draw(start.task_id, 1)[0]
                init_state, states = self.demos[start.task_id][demo.demo]
                start = StartState(start.task_id, init_state if init_state >= 0 else start.init_state,
                                   states[demo.step], demo)
            out.append(start)
        return out

    def observe(self, episodes: Iterable[Outcome]) -> None:
        episodes = list(episodes)
        from_demos = [ep for ep in episodes if getattr(getattr(ep, "start", None), "demo", None) is not None]
        for task in sorted({ep.task_id for ep in from_demos}):
            self.curriculum.observe(task, [bool(ep.success) for ep in from_demos if ep.task_id == task and ep.ok])
        self.base.observe([ep for ep in episodes if getattr(getattr(ep, "start", None), "demo", None) is None])

    def task_weights(self) -> dict[str, float]:
        return self.base.task_weights()

    def metrics(self) -> dict[str, float]:
        out = {**self.base.metrics(), **self.curriculum.metrics()}
        out.update({f"curriculum/{t}/success": v for t, v in sorted(self.curriculum.success.items())})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "curriculum": self.curriculum.state_dict(),
                "started": self.started, "enrolment": dict(self.enrolment)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "curriculum" not in state:
            raise EnvError("the checkpoint's sampler state has no reverse curriculum: resume with the "
                           "train.curriculum the run started with")
        self.base.load_state_dict(state["base"])
        self.curriculum.load_state_dict(state["curriculum"])
        self.started = bool(state["started"])
        self.enrolment = {t: float(v) for t, v in state.get("enrolment", {}).items()}


CURRICULA = ("none", "reverse")
"""``train.curriculum`` values."""


def with_curriculum(sampler: StartStateSampler, config: Any, pool: Any) -> StartStateSampler:
    """``sampler`` with the curriculum ``config.train.curriculum`` names (a :class:`RunConfig`'s), or
    ``sampler`` itself for ``none``. ``reverse`` needs a pool whose envs restore states (``pool.
    restores_state``) and demo files with simulator states (``train.curriculum_demos``, else
    ``sft.demos``); either missing is one :class:`ConfigError` / DataError line."""
    train = config.train
    if train.curriculum == "none":
        return sampler
    if train.curriculum not in CURRICULA:
        raise ConfigError(f"train.curriculum must be one of {', '.join(CURRICULA)}, got {train.curriculum!r}")
    if pool is None:
        raise ConfigError("train.curriculum=reverse runs with rollout.inference=driver (the trainer's own env pool) "
                          "only, not learner-side rollouts; set rollout.inference=driver or train.curriculum=none")
    if not getattr(pool, "restores_state", False):
        raise ConfigError(f"train.curriculum=reverse needs an env that restores recorded simulator states "
                          f"(get_state/restore_state, see pushcut.envcontract.RestoresState); env.type="
                          f"{config.env.type} has none: use an env that does (tabletop, libero) or train.curriculum=none")
    paths = [train.curriculum_demos] if train.curriculum_demos else list(getattr(config.sft, "demos", ()) or ())
    if not paths:
        raise ConfigError("train.curriculum=reverse needs demos with simulator states: set train.curriculum_demos="
                          "PATH (record them with `pushcut demos ENV`)")
    from pushcut.demos import read_demo_states

    tasks = set(sampler.states_of)
    demos = {t: v for t, v in read_demo_states(paths).items() if t in tasks}
    if not demos:
        raise ConfigError(f"train.curriculum=reverse: the demo file(s) {', '.join(map(str, paths))} hold no demo "
                          f"of the env's tasks ({', '.join(sorted(tasks))})")
    curriculum = ReverseCurriculum({t: [len(s) for _, s in v] for t, v in demos.items()}, config.seed,
                                   threshold=train.curriculum_threshold, step=train.curriculum_step,
                                   initial=train.curriculum_initial, apply_below=train.curriculum_apply_below)
    return CurriculumSampler(sampler, curriculum, demos)


SAMPLERS: dict[str, type[StartStateSampler]] = {"uniform": UniformSampler, "mixed": MixedSampler, "band": BandSampler}
"""``train.start_sampling`` name → sampler class."""


def make_sampler(name: str, tasks: Sequence[TaskSpec], seed: int, group_size: int = 8) -> StartStateSampler:
    """The sampler ``train.start_sampling`` names, over ``tasks``' train initial states."""
    if name not in SAMPLERS:
        raise ConfigError(f"train.start_sampling must be one of {', '.join(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name](tasks, seed, group_size)
