"""Closed-loop rollout collection.

Every policy step makes ONE batched ``act`` call over all active
episodes (of a lane), sends each episode's chunk to its env slot, and keeps the
sampling-time log-probs (no second forward pass to recompute them). Finished
episodes are neither stepped nor sent to the policy again; their slot takes the
next queued episode. With ``pipeline=True`` the slots are split into two lanes
on disjoint workers, and the policy serves one lane while the other lane's envs
step (RLinf-style overlap).

The collector only needs an ``act`` callable (observations, temperature → an
:class:`ActionSample`), so the policy may live elsewhere (another process, a
rollout server); :meth:`RolloutCollector.for_policy` builds one around a local
:class:`Policy`. Success is judged once per round, after every episode of it
finished (:meth:`SuccessDetector.judge_all`), so a slow judge never stalls the
lanes. A round comes back as an :class:`EpisodeBatch`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pushcut.batch import Episode, EpisodeBatch
from pushcut.contracts import (
    ActionSample, EpisodeOutcome, Observation, ObsBatch, Policy, StepResult, SuccessDetector, TaskSpec,
)
from pushcut.envpool import EnvPool, SlotFailure
from pushcut.errors import EnvError
from pushcut.sampling import StartState

log = logging.getLogger("pushcut")

Act = Callable[[ObsBatch, float], ActionSample]
"""What the collector calls once per policy step: observations and temperature → chunks + log-probs."""


@dataclass
class RolloutStats:
    """Counters of one collection."""

    episodes: int = 0
    env_steps: int = 0
    policy_calls: int = 0
    failed: int = 0
    policy_s: float = 0.0
    env_s: float = 0.0
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)


class RolloutCollector:
    """Runs episodes from given start states on an :class:`EnvPool` with an ``act`` callable."""

    def __init__(
        self,
        pool: EnvPool,
        act: Act,
        detector: SuccessDetector,
        max_steps: int = 0,
        pipeline: bool = False,
    ) -> None:
        self.pool = pool
        self.act = act
        self.detector = detector
        self.tasks: dict[str, TaskSpec] = {t.task_id: t for t in pool.tasks()}
        self.max_steps = max_steps
        self.pipeline = pipeline
        self._retired: set[int] = set()
        """Workers already reported down."""

    @classmethod
    def for_policy(cls, pool: EnvPool, policy: Policy, detector: SuccessDetector, max_steps: int = 0,
                   pipeline: bool = False) -> RolloutCollector:
        """A collector acting with a local policy, after checking that its actions fit the env."""
        env_dim = pool.action_spec.action_dim
        if getattr(policy, "action_dim", env_dim) != env_dim:
            raise EnvError(
                f"the policy produces action_dim={policy.action_dim} but the env expects action_dim={env_dim}: "
                f"set the policy's action_dim to {env_dim}"
            )
        return cls(pool, policy.act, detector, max_steps, pipeline)

    def _lanes(self) -> list[list[int]]:
        slots = list(range(self.pool.num_slots))
        if not self.pipeline:
            return [slots]
        workers = self.pool.num_workers
        if workers < 2:
            raise EnvError("rollout.pipeline needs at least 2 env workers (rollout.num_workers >= 2)")
        half = (workers // 2) * self.pool.envs_per_worker
        return [slots[:half], slots[half:]]

    def collect(
        self,
        starts: Sequence[StartState],
        group_size: int,
        temperature: float,
        record: Callable[[int], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
        group_offset: int = 0,
    ) -> tuple[EpisodeBatch, RolloutStats]:
        """Run ``group_size`` episodes from each start state. Episode ``k`` belongs
        to group ``group_offset + k // group_size``. ``record(k)`` asks for frames."""
        t0 = time.perf_counter()
        for s in starts:
            if s.task_id not in self.tasks:
                raise EnvError(f"unknown task {s.task_id!r}; the env offers: {', '.join(sorted(self.tasks))}")
        if any(s.sim_state is not None for s in starts) and not self.pool.restores_state:
            raise EnvError("a start state carries a recorded simulator state, but this pool's envs cannot restore "
                           "one (no restore_state, see pushcut.envcontract.RestoresState)")
        episodes = [
            Episode(s.task_id, self.tasks[s.task_id].instruction, s.init_state, group_offset + i, start=s)
            for i, s in enumerate(starts)
            for _ in range(group_size)
        ]
        wants_frames = [bool(self.detector.needs_frames or (record and record(k))) for k in range(len(episodes))]
        queue = deque(range(len(episodes)))
        stats = RolloutStats(episodes=len(episodes))
        lanes = [_Lane(slots) for slots in self._lanes()]
        finished = 0

        def finish(k: int) -> None:
            nonlocal finished
            ep = episodes[k]
            ep._finalize()
            finished += 1
            if progress:
                progress(finished, len(episodes))

        while finished < len(episodes):
            for lane in lanes:
                if lane.ticket is not None:
                    t = time.perf_counter()
                    results = self.pool.collect(lane.ticket)
                    stats.env_s += time.perf_counter() - t
                    lane.ticket = None
                    self._absorb(lane, results, episodes, stats, finish)
                self._refill(lane, lanes, queue, episodes, wants_frames, stats, finish)
                if lane.active:
                    lane.ticket = self._act_and_submit(lane, episodes, temperature, wants_frames, stats, finish)
        self._judge(episodes)
        for ep in episodes:
            if not ep.ok:
                stats.failed += 1
                stats.failures.append(f"{ep.task_id}#{ep.init_state}: {ep.failure}")
        stats.wall_s = time.perf_counter() - t0
        return EpisodeBatch(episodes, group_size), stats

    def _judge(self, episodes: list[Episode]) -> None:
        """Reward = the detector's verdict, asked once for the whole round (see
        :meth:`SuccessDetector.judge_all`); an unjudged episode is dropped."""
        done = [ep for ep in episodes if ep.ok]
        if not done:
            return
        outcomes = [EpisodeOutcome(ep.task_id, ep.instruction, ep.init_state, ep.env_success, ep.length,
                                   ep.final_info, ep.frames) for ep in done]
        verdicts = list(self.detector.judge_all(outcomes))
        if len(verdicts) != len(done):
            raise EnvError(f"{type(self.detector).__name__}.judge_all returned {len(verdicts)} verdicts "
                           f"for {len(done)} episodes; it must return one per episode, in order")
        for ep, verdict in zip(done, verdicts):
            if verdict is None:
                ep.failure = f"unjudged by the success detector ({type(self.detector).__name__})"
            else:
                ep.success = bool(verdict)
                ep.reward = float(ep.success)

    # ----------------------------------------------------------------- steps of the loop

    def _limit(self, ep: Episode) -> int:
        return self.max_steps or self.tasks[ep.task_id].max_steps

    def _retire_down_slots(self, lanes: list[_Lane]) -> None:
        """Stop using the slots of workers that are down for good (their transport could not
        bring them back): the round goes on, slower, on the others. When none is left, the
        pool's next request fails with the down worker's fix."""
        down = self.pool.down()
        if not down:
            return
        up = [[s for s in lane.free if self.pool.worker_of(s) not in down] for lane in lanes]
        if not any(free or lane.active for free, lane in zip(up, lanes)):
            return
        for free, lane in zip(up, lanes):
            lane.free = free
        for w in sorted(set(down) - self._retired):
            self._retired.add(w)
            log.warning("env worker %d is down (%s); continuing on the others (%d of %d down)", w, down[w],
                        len(self._retired), self.pool.num_workers)

    def _refill(self, lane: _Lane, lanes: list[_Lane], queue: deque[int], episodes: list[Episode],
                wants_frames: list[bool], stats: RolloutStats, finish: Callable[[int], None]) -> None:
        """Reset free slots of the lane to queued episodes, spread over the workers (see
        :meth:`_pick_slots`)."""
        while lane.free and queue:
            self._retire_down_slots(lanes)
            slots = self._pick_slots(lane, lanes, len(queue))
            if not slots:
                break
            assignments = {}
            for slot in slots:
                k = queue.popleft()
                lane.free.remove(slot)
                lane.active[slot] = k
                episodes[k].slot = slot
                assignments[slot] = _reset_args(episodes[k])
            t = time.perf_counter()
            results = self.pool.reset(assignments)
            stats.env_s += time.perf_counter() - t
            for slot, obs in results.items():
                if isinstance(obs, SlotFailure):
                    self._fail(lane, slot, episodes, obs.reason, finish)
                else:
                    lane.obs[slot] = obs
            self._drop_lost(lane, episodes, finish)

    def _pick_slots(self, lane: _Lane, lanes: list[_Lane], queued: int) -> list[int]:
        """Free slots of ``lane`` for up to ``queued`` episodes: least-loaded worker first, and no
        worker past its fair share of the round's remaining work (ceil((running + queued) / workers),
        counted over every lane). So 8 episodes on 2 workers × 8 slots run 4 + 4 instead of 8 on
        worker 0 while worker 1 idles, and in a pipeline the first lane to refill does not take the
        other lane's share. A worker with nothing to do is always under its share, so a queued
        episode never waits while a worker idles."""
        running = sum(len(ln.active) for ln in lanes)
        workers = {self.pool.worker_of(s) for ln in lanes for s in (*ln.free, *ln.active)}
        share = -(-(running + queued) // max(1, len(workers)))
        busy = [s for ln in lanes for s in ln.active]
        return self.pool.spread(lane.free, busy, queued, per_worker=share)

    def _act_and_submit(self, lane: _Lane, episodes: list[Episode], temperature: float, wants_frames: list[bool],
                        stats: RolloutStats, finish: Callable[[int], None]):
        slots = sorted(lane.active)
        ks = [lane.active[s] for s in slots]
        batch = ObsBatch.from_observations(
            [lane.obs[s] for s in slots], [episodes[k].instruction for k in ks], [episodes[k].task_id for k in ks]
        )
        t = time.perf_counter()
        with torch.inference_mode():
            sample = self.act(batch, temperature)
        stats.policy_s += time.perf_counter() - t
        stats.policy_calls += 1
        expected = (len(slots), self.pool.action_spec.action_dim)
        if sample.actions.shape[0] != expected[0] or sample.actions.shape[2] != expected[1]:
            raise EnvError(
                f"policy.act returned actions of shape {sample.actions.shape}; expected "
                f"({expected[0]}, chunk, {expected[1]}) for {expected[0]} observations and the env's action_dim"
            )
        # one device->host copy per call; episodes keep CPU tensors (the learner moves micro-batches)
        lp = sample.log_probs.detach().float().cpu()
        mask = sample.mask.detach().cpu()
        rows = {key: v.detach().cpu() for key, v in sample.sample.items()}
        finite_lp = torch.isfinite(torch.where(mask, lp, torch.zeros_like(lp))).all(dim=1).numpy()
        finite_act = np.isfinite(sample.actions).reshape(len(slots), -1).all(axis=1)
        to_step = {}
        for i, (slot, k) in enumerate(zip(slots, ks)):
            ep = episodes[k]
            if not (finite_lp[i] and finite_act[i]):
                what = "log-probs" if not finite_lp[i] else "actions"
                self._fail(lane, slot, episodes, f"policy returned NaN/inf {what}", finish)
                continue
            ep.add_step(lane.obs.pop(slot), {key: v[i] for key, v in rows.items()}, lp[i], mask[i])
            remaining = self._limit(ep) - ep.length
            to_step[slot] = np.ascontiguousarray(sample.actions[i][:remaining], dtype=np.float32)
        if not to_step:
            return None
        record = {slot: wants_frames[lane.active[slot]] for slot in to_step}
        return self.pool.submit_step(to_step, record)

    def _absorb(self, lane: _Lane, results: dict[int, StepResult | SlotFailure], episodes: list[Episode],
                stats: RolloutStats, finish: Callable[[int], None]) -> None:
        for slot, result in results.items():
            if slot not in lane.active:
                continue
            k = lane.active[slot]
            ep = episodes[k]
            if isinstance(result, SlotFailure):
                self._fail(lane, slot, episodes, result.reason, finish)
                continue
            ep.length += result.steps
            stats.env_steps += result.steps
            ep.frames.extend(result.frames)
            ep.env_success = bool(result.success)
            ep.final_info = result.info
            if result.done or result.success or ep.length >= self._limit(ep):
                del lane.active[slot]
                lane.free.append(slot)
                finish(k)
            else:
                lane.obs[slot] = result.observation
        self._drop_lost(lane, episodes, finish)

    def _drop_lost(self, lane: _Lane, episodes: list[Episode], finish: Callable[[int], None]) -> None:
        for slot in self.pool.pop_lost_slots():
            if slot in lane.active:
                self._fail(lane, slot, episodes, "its env worker was restarted", finish)

    @staticmethod
    def _fail(lane: _Lane, slot: int, episodes: list[Episode], reason: str, finish: Callable[[int], None]) -> None:
        k = lane.active.pop(slot)
        lane.obs.pop(slot, None)
        lane.free.append(slot)
        if episodes[k].failure is None:
            episodes[k].failure = reason
        finish(k)


def _reset_args(ep: Episode) -> tuple:
    """The pool's reset request for an episode: (task, init state), plus the recorded simulator state
    when it starts from one (sent as a typed array, see :meth:`EnvPool.reset`)."""
    state = ep.start.sim_state if ep.start is not None else None
    if state is None:
        return ep.task_id, ep.init_state
    return ep.task_id, ep.init_state, np.asarray(state, dtype=np.float64)


class _Lane:
    """Slots served together: free slots, slot → episode index, pending observations."""

    def __init__(self, slots: list[int]) -> None:
        self.free: list[int] = list(slots)
        self.active: dict[int, int] = {}
        self.obs: dict[int, Observation] = {}
        self.ticket = None
