"""The rollout collector: batched policy calls, finished episodes stop, kept log-probs, bad input."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from pushcut.contracts import ActionSample
from pushcut.envpool import EnvPool
from pushcut.errors import EnvError
from pushcut.plugins.rewards.env_success import EnvSuccess
from pushcut.rollout import RolloutCollector, StartState
from faulty_reach import FaultyReachConfig, FaultyReachEnv
from pushcut.toys import BinPolicy, BinPolicyConfig, ReachConfig, ReachEnv


class CountingPolicy(BinPolicy):
    """Records the batch size of every act() call."""

    def __init__(self, config):
        super().__init__(config)
        self.calls = []

    def act(self, obs, temperature):
        self.calls.append(len(obs))
        return super().act(obs, temperature)


@pytest.fixture(scope="module")
def pool():
    p = EnvPool(FaultyReachEnv, FaultyReachConfig(crash_on_init_state=7), num_workers=2, envs_per_worker=4,
                timeout_s=30)
    yield p
    p.close()


def test_groups_share_start_and_finished_episodes_stop(pool):
    policy = CountingPolicy(BinPolicyConfig(chunk_size=2))
    collector = RolloutCollector.for_policy(pool, policy, EnvSuccess())
    starts = [StartState("reach_0", 0), StartState("reach_1", 1)]
    episodes, stats = collector.collect(starts, group_size=4, temperature=1.0)
    assert len(episodes) == 8 and [e.group for e in episodes] == [0] * 4 + [1] * 4
    for ep in episodes:
        first = ep.observations[0]["state"]
        same_group = [e for e in episodes if e.group == ep.group]
        assert all(np.array_equal(e.observations[0]["state"], first) for e in same_group)
        assert ep.length <= 6 and ep.num_chunks == ep.log_probs.shape[0] == ep.mask.shape[0]
        assert ep.log_probs.shape[1] == 2 and ep.samples["bins"].shape == (ep.num_chunks, 2)
        assert ep.reward == float(ep.success) and ep.success == ep.env_success
    # one batched call per step over active episodes only: batches shrink as episodes finish
    assert policy.calls[0] == 8 and sum(policy.calls) == sum(e.num_chunks for e in episodes)
    assert stats.policy_calls == len(policy.calls)
    assert stats.env_steps == sum(e.length for e in episodes)


def test_sampling_log_probs_are_kept_and_match_recomputation(pool):
    policy = BinPolicy(BinPolicyConfig())
    collector = RolloutCollector.for_policy(pool, policy, EnvSuccess())
    episodes, _ = collector.collect([StartState("reach_0", 2)], group_size=4, temperature=1.6)
    from pushcut.contracts import ObsBatch

    for ep in episodes:
        obs = ObsBatch.from_observations(ep.observations, [ep.instruction] * ep.num_chunks, [ep.task_id] * ep.num_chunks)
        with torch.no_grad():
            again = policy.log_probs(obs, ep.samples, 1.6).log_probs
        torch.testing.assert_close(again, ep.log_probs, atol=1e-5, rtol=0)


def test_more_episodes_than_slots_are_queued(pool):
    collector = RolloutCollector.for_policy(pool, BinPolicy(BinPolicyConfig()), EnvSuccess())
    starts = [StartState("reach_0", i) for i in range(5)]
    episodes, stats = collector.collect(starts, group_size=4, temperature=1.0)
    assert len(episodes) == 20 > pool.num_slots and all(e.ok for e in episodes)


def test_env_crash_drops_episode_and_counts_it(pool):
    collector = RolloutCollector.for_policy(pool, BinPolicy(BinPolicyConfig()), EnvSuccess())
    episodes, stats = collector.collect([StartState("reach_0", 7), StartState("reach_0", 1)], 2, 1.0)
    assert [e.ok for e in episodes] == [False, False, True, True]
    assert stats.failed == 2 and "simulated simulator crash" in episodes[0].failure


class NaNPolicy(BinPolicy):
    def act(self, obs, temperature):
        sample = super().act(obs, temperature)
        lp = sample.log_probs.clone()
        lp[0] = float("nan")
        return ActionSample(sample.actions, sample.sample, lp, sample.mask)


def test_nan_log_probs_drop_the_episode(pool):
    collector = RolloutCollector.for_policy(pool, NaNPolicy(BinPolicyConfig()), EnvSuccess())
    episodes, stats = collector.collect([StartState("reach_0", 0)], 3, 1.0)
    assert stats.failed >= 1 and any("NaN" in (e.failure or "") for e in episodes)


def test_action_dim_mismatch_names_both_numbers(pool):
    with pytest.raises(EnvError, match=r"action_dim=2 but the env expects action_dim=1"):
        RolloutCollector.for_policy(pool, BinPolicy(BinPolicyConfig(action_dim=2)), EnvSuccess())


class WrongShapePolicy(BinPolicy):
    def act(self, obs, temperature):
        s = super().act(obs, temperature)
        return ActionSample(np.zeros((len(obs) + 1, 1, 1), np.float32), {}, torch.zeros(len(obs) + 1, 1),
                            torch.ones(len(obs) + 1, 1, dtype=torch.bool))


def test_wrong_action_batch_shape_is_an_error(pool):
    collector = RolloutCollector.for_policy(pool, WrongShapePolicy(BinPolicyConfig()), EnvSuccess())
    with pytest.raises(EnvError, match=r"returned actions of shape"):
        collector.collect([StartState("reach_0", 0)], 2, 1.0)


def test_unknown_task_lists_valid_ones(pool):
    collector = RolloutCollector.for_policy(pool, BinPolicy(BinPolicyConfig()), EnvSuccess())
    with pytest.raises(EnvError, match=r"unknown task 'nope'; the env offers: reach_0, reach_1"):
        collector.collect([StartState("nope", 0)], 2, 1.0)


def test_pipelined_schedule_gives_the_same_episodes():
    """Same policy RNG consumption differs by schedule, so compare greedy rollouts."""
    with EnvPool(ReachEnv, ReachConfig(), num_workers=2, envs_per_worker=2) as pool:
        policy = BinPolicy(BinPolicyConfig())
        starts = [StartState("reach_1", i) for i in range(6)]
        seq, _ = RolloutCollector.for_policy(pool, policy, EnvSuccess()).collect(starts, 1, 0.0)
        pipe, stats = RolloutCollector.for_policy(pool, policy, EnvSuccess(), pipeline=True).collect(starts, 1, 0.0)
        assert [(e.length, e.success) for e in seq] == [(e.length, e.success) for e in pipe]


def test_the_collector_needs_only_an_act_callable(pool):
    """Rollout can be served from anywhere: a plain function stands in for the policy."""
    calls = []

    def act(obs, temperature):
        calls.append((len(obs), temperature))
        n = len(obs)
        return ActionSample(np.full((n, 3, 1), 0.5, np.float32), {"x": torch.zeros(n, 1)}, torch.full((n, 1), -0.1),
                            torch.ones(n, 1, dtype=torch.bool))

    batch, _ = RolloutCollector(pool, act, EnvSuccess()).collect([StartState("reach_1", 0)], 2, 0.7)
    assert calls and all(t == 0.7 for _, t in calls) and calls[0][0] == 2
    assert all(ep.ok and ep.num_chunks >= 1 for ep in batch)


class RoundJudge(EnvSuccess):
    """Answers a whole round at once; leaves the second episode of every group unjudged."""

    def __init__(self):
        super().__init__()
        self.rounds = []

    def judge(self, episode):
        raise AssertionError("the collector asks judge_all, not judge")

    def judge_all(self, episodes):
        self.rounds.append(list(episodes))
        return [None if i % 2 else ep.env_success for i, ep in enumerate(episodes)]


def test_success_is_judged_once_per_round_after_it_and_unjudged_episodes_are_dropped(pool):
    judge = RoundJudge()
    collector = RolloutCollector.for_policy(pool, BinPolicy(BinPolicyConfig()), judge)
    batch, stats = collector.collect([StartState("reach_0", 1), StartState("reach_1", 2)], 2, 1.0)
    assert len(judge.rounds) == 1 and len(judge.rounds[0]) == 4  # one call, every finished episode
    assert [ep.ok for ep in batch] == [True, False, True, False]
    assert stats.failed == 2 and all("unjudged" in ep.failure for ep in batch if not ep.ok)
    assert [ep.reward for ep in batch if ep.ok] == [float(ep.env_success) for ep in batch if ep.ok]
    assert batch.usable().num_groups == 0  # a group with an unjudged episode cannot be normalised


class ShortJudge(EnvSuccess):
    def judge_all(self, episodes):
        return [True]


def test_a_detector_that_answers_the_wrong_number_of_verdicts_is_an_error(pool):
    collector = RolloutCollector.for_policy(pool, BinPolicy(BinPolicyConfig()), ShortJudge())
    with pytest.raises(EnvError, match=r"ShortJudge.judge_all returned 1 verdicts for 4 episodes"):
        collector.collect([StartState("reach_0", 1)], 4, 1.0)


def test_an_episode_batch_finds_groups_by_their_id_not_their_position(pool):
    from pushcut.batch import EpisodeBatch

    batch, _ = RolloutCollector.for_policy(pool, BinPolicy(BinPolicyConfig(chunk_size=2)), EnvSuccess()).collect(
        [StartState("reach_0", 1), StartState("reach_1", 2), StartState("reach_0", 3)], 2, 1.6, group_offset=5)
    order = [4, 0, 2, 5, 1, 3]
    shuffled = EpisodeBatch([batch[k] for k in order], 2)
    assert [[ep.group for ep in g] for g in shuffled.groups()] == [[7, 7], [5, 5], [6, 6]]
    assert shuffled.group_index().tolist() == [0, 1, 2, 0, 1, 2] and shuffled.num_groups == 3
    assert shuffled.rewards().tolist() == [batch[k].reward for k in order]
    keep = torch.tensor([True, False, True, True, False, True])
    assert [ep.group for ep in shuffled.select(keep)] == [7, 6, 7, 6]
    assert [ep.group for ep in shuffled.first_groups(2)] == [7, 7, 5, 5]
    # rows for the update: padded per-episode masks and gathered (episode, chunk) rows
    picks = [0, 3]
    mask = shuffled.episode_mask(picks)
    t_len = shuffled.token_len
    for i, e in enumerate(picks):
        n = shuffled[e].num_chunks * t_len
        assert mask[i, :n].tolist() == shuffled[e].mask.reshape(-1).tolist() and not mask[i, n:].any()
    rows = shuffled.rows(picks)
    obs, sample, old, m = shuffled.gather([(picks[i], r) for i, r in rows])
    assert len(obs) == len(rows) == sum(shuffled[e].num_chunks for e in picks)
    i, r = rows[-1]
    torch.testing.assert_close(old[-1], shuffled[picks[i]].log_probs[r])
    torch.testing.assert_close(sample["bins"][-1], shuffled[picks[i]].samples["bins"][r])
    with pytest.raises(ValueError, match="advantages of shape"):
        shuffled.with_advantages(torch.zeros(5))


# ----------------------------------------------------------------- balanced slots


def _hold(obs, temperature):
    """A deterministic act that never moves the dot: every episode runs its full budget."""
    n = len(obs)
    return ActionSample(np.zeros((n, 2, 1), np.float32), {"x": torch.zeros(n, 1)}, torch.zeros(n, 1),
                        torch.ones(n, 1, dtype=torch.bool))


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_round_is_spread_over_the_workers(pipeline):
    """8 episodes on 2 workers × 8 slots run 4 + 4 (not all 8 on worker 0 while worker 1 idles),
    in the plain schedule and in the pipeline (where the first lane must not take them all)."""
    with EnvPool(ReachEnv, ReachConfig(max_steps=4), num_workers=2, envs_per_worker=8, timeout_s=30) as pool:
        batch, _ = RolloutCollector(pool, _hold, EnvSuccess(), pipeline=pipeline).collect(
            [StartState("reach_0", 1), StartState("reach_1", 2)], 4, 1.0)
        assert all(ep.ok for ep in batch)
        workers = [pool.worker_of(ep.slot) for ep in batch]
        assert sorted(workers) == [0] * 4 + [1] * 4
        assert len({ep.slot for ep in batch}) == 8


def test_refills_go_to_the_least_loaded_worker():
    """6 equal episodes on 2 workers × 2 slots: 2 + 2 first, and when all four finish together
    the two queued ones go one to each worker (not both to the worker whose slots freed last)."""
    with EnvPool(ReachEnv, ReachConfig(max_steps=4), num_workers=2, envs_per_worker=2, timeout_s=30) as pool:
        batch, _ = RolloutCollector(pool, _hold, EnvSuccess()).collect(
            [StartState("reach_0", i) for i in range(6)], 1, 1.0)
        assert all(ep.ok and ep.length == 4 for ep in batch)
        workers = [pool.worker_of(ep.slot) for ep in batch]
        assert sorted(workers[:4]) == [0, 0, 1, 1] and sorted(workers[4:]) == [0, 1]


def test_a_refill_never_waits_while_a_worker_idles():
    """5 episodes on 2 workers × 4 slots: 3 + 2 at once, none queued behind a busy worker."""
    with EnvPool(ReachEnv, ReachConfig(max_steps=4), num_workers=2, envs_per_worker=4, timeout_s=30) as pool:
        policy = CountingPolicy(BinPolicyConfig(chunk_size=4))
        batch, _ = RolloutCollector.for_policy(pool, policy, EnvSuccess()).collect(
            [StartState("reach_0", i) for i in range(5)], 1, 1.0)
        assert policy.calls[0] == 5  # every episode in the first batched call
        assert sorted(pool.worker_of(ep.slot) for ep in batch) == [0, 0, 0, 1, 1]
