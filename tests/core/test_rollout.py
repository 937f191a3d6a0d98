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
    p = EnvPool(ReachEnv, ReachConfig(crash_on_init_state=7), num_workers=2, envs_per_worker=4, timeout_s=30)
    yield p
    p.close()


def test_groups_share_start_and_finished_episodes_stop(pool):
    policy = CountingPolicy(BinPolicyConfig(chunk_size=2))
    collector = RolloutCollector(pool, policy, EnvSuccess())
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
    collector = RolloutCollector(pool, policy, EnvSuccess())
    episodes, _ = collector.collect([StartState("reach_0", 2)], group_size=4, temperature=1.6)
    from pushcut.contracts import ObsBatch

    for ep in episodes:
        obs = ObsBatch.from_observations(ep.observations, [ep.instruction] * ep.num_chunks, [ep.task_id] * ep.num_chunks)
        with torch.no_grad():
            again = policy.log_probs(obs, ep.samples, 1.6).log_probs
        torch.testing.assert_close(again, ep.log_probs, atol=1e-5, rtol=0)


def test_more_episodes_than_slots_are_queued(pool):
    collector = RolloutCollector(pool, BinPolicy(BinPolicyConfig()), EnvSuccess())
    starts = [StartState("reach_0", i) for i in range(5)]
    episodes, stats = collector.collect(starts, group_size=4, temperature=1.0)
    assert len(episodes) == 20 > pool.num_slots and all(e.ok for e in episodes)


def test_env_crash_drops_episode_and_counts_it(pool):
    collector = RolloutCollector(pool, BinPolicy(BinPolicyConfig()), EnvSuccess())
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
    collector = RolloutCollector(pool, NaNPolicy(BinPolicyConfig()), EnvSuccess())
    episodes, stats = collector.collect([StartState("reach_0", 0)], 3, 1.0)
    assert stats.failed >= 1 and any("NaN" in (e.failure or "") for e in episodes)


def test_action_dim_mismatch_names_both_numbers(pool):
    with pytest.raises(EnvError, match=r"action_dim=2 but the env expects action_dim=1"):
        RolloutCollector(pool, BinPolicy(BinPolicyConfig(action_dim=2)), EnvSuccess())


class WrongShapePolicy(BinPolicy):
    def act(self, obs, temperature):
        s = super().act(obs, temperature)
        return ActionSample(np.zeros((len(obs) + 1, 1, 1), np.float32), {}, torch.zeros(len(obs) + 1, 1),
                            torch.ones(len(obs) + 1, 1, dtype=torch.bool))


def test_wrong_action_batch_shape_is_an_error(pool):
    collector = RolloutCollector(pool, WrongShapePolicy(BinPolicyConfig()), EnvSuccess())
    with pytest.raises(EnvError, match=r"returned actions of shape"):
        collector.collect([StartState("reach_0", 0)], 2, 1.0)


def test_unknown_task_lists_valid_ones(pool):
    collector = RolloutCollector(pool, BinPolicy(BinPolicyConfig()), EnvSuccess())
    with pytest.raises(EnvError, match=r"unknown task 'nope'; the env offers: reach_0, reach_1"):
        collector.collect([StartState("nope", 0)], 2, 1.0)


def test_pipelined_schedule_gives_the_same_episodes():
    """Same policy RNG consumption differs by schedule, so compare greedy rollouts."""
    with EnvPool(ReachEnv, ReachConfig(), num_workers=2, envs_per_worker=2) as pool:
        policy = BinPolicy(BinPolicyConfig())
        starts = [StartState("reach_1", i) for i in range(6)]
        seq, _ = RolloutCollector(pool, policy, EnvSuccess()).collect(starts, 1, 0.0)
        pipe, stats = RolloutCollector(pool, policy, EnvSuccess(), pipeline=True).collect(starts, 1, 0.0)
        assert [(e.length, e.success) for e in seq] == [(e.length, e.success) for e in pipe]
