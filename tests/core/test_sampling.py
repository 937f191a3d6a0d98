"""Start-state samplers (recipe step 1): the registry, uniform passes, mixed-outcome weighting."""

import numpy as np
import pytest
import torch

from pushcut import algos
from pushcut.errors import ConfigError
from pushcut.batch import Episode
from pushcut.sampling import (
    SAMPLERS, BandSampler, MixedSampler, StartState, UniformSampler, make_sampler, mixed_group_chance,
)
from pushcut.toys import ReachConfig, ReachEnv


def test_the_registry_names_every_sampler_and_refuses_others():
    env = ReachEnv(ReachConfig(num_init_states=10, num_eval=3))
    assert set(SAMPLERS) == {"uniform", "mixed", "band"}
    assert isinstance(make_sampler("mixed", env.tasks(), 0), MixedSampler)
    with pytest.raises(ConfigError, match="must be one of uniform, mixed, band, got 'greedy'"):
        make_sampler("greedy", env.tasks(), 0)


def test_sampler_uses_train_split_only_and_resumes():
    env = ReachEnv(ReachConfig(num_init_states=10, num_eval=3))
    sampler = UniformSampler(env.tasks(), seed=1)
    drawn = sampler.draw(30)
    assert {s.init_state for s in drawn} <= set(range(7))
    state = sampler.state_dict()
    nxt = sampler.draw(5)
    other = UniformSampler(env.tasks(), seed=99)
    other.load_state_dict(state)
    assert other.draw(5) == nxt


def outcomes(task_id: str, successes: list[bool], init_state: int = 0) -> list[Episode]:
    return [Episode(task_id, "", init_state, 0, success=s) for s in successes]


def test_mixed_sampling_starves_hopeless_tasks_cycles_states_and_resumes():
    env = ReachEnv(ReachConfig(targets=(-0.5, 0.0, 0.5), num_init_states=10, num_eval=3))
    sampler = MixedSampler(env.tasks(), seed=0, group_size=8)
    # before any outcome every task is as likely as any other
    assert list(sampler.task_weights().values()) == pytest.approx([1 / 3] * 3)
    sampler.observe([*outcomes("reach_0", [False] * 8), *outcomes("reach_1", [True, False] * 4),
                     *outcomes("reach_2", [True] * 7 + [False])])
    weights = sampler.task_weights()
    assert weights["reach_1"] > weights["reach_2"] > weights["reach_0"] > 0  # floored, never dropped
    drawn = sampler.draw(3000)
    share = {t: sum(s.task_id == t for s in drawn) / len(drawn) for t in weights}
    for task, weight in weights.items():
        assert share[task] == pytest.approx(weight, abs=0.03), (share, weights)
    # within a task, each train state comes once before any comes twice
    first = [s.init_state for s in drawn if s.task_id == "reach_1"][:14]
    assert sorted(first[:7]) == list(range(7)) and sorted(first[7:]) == list(range(7))
    # a later round moves the running success halfway to the new rate
    sampler.observe(outcomes("reach_0", [True] * 8))
    assert sampler.success["reach_0"] == pytest.approx(0.5)
    state = sampler.state_dict()
    nxt = sampler.draw(20)
    other = MixedSampler(env.tasks(), seed=99, group_size=8)
    other.load_state_dict(state)
    assert other.draw(20) == nxt


def test_uniform_sampling_ignores_outcomes():
    env = ReachEnv(ReachConfig(num_init_states=10, num_eval=3))
    a, b = UniformSampler(env.tasks(), seed=3), UniformSampler(env.tasks(), seed=3)
    a.observe(outcomes("reach_0", [False] * 8))
    assert a.draw(40) == b.draw(40)
    # the recipe's order: shuffled passes over all (task, state) pairs from one stream seeded by the run
    rng, pairs = np.random.default_rng(3), b.pairs
    expected = [pairs[i] for i in rng.permutation(len(pairs))] + [pairs[i] for i in rng.permutation(len(pairs))]
    assert UniformSampler(env.tasks(), seed=3).draw(2 * len(pairs)) == expected


def test_mixed_group_chance_is_the_probability_that_dynamic_sampling_keeps_a_group():
    assert mixed_group_chance(0.0, 8) == 0.0
    assert mixed_group_chance(1.0, 8) == 0.0
    assert mixed_group_chance(0.5, 8) > mixed_group_chance(0.9, 8) > mixed_group_chance(0.01, 8)
    # against every outcome of a group of 4, weighted by its probability, through the filter itself
    g, p = 4, 0.3
    outcomes = torch.tensor([[(k >> i) & 1 for i in range(g)] for k in range(2**g)], dtype=torch.float32)
    rewards = outcomes.flatten()
    kept = algos.group_keep_mask(rewards, torch.arange(2**g).repeat_interleave(g)).view(2**g, g)[:, 0]
    chance = sum(p ** int(o.sum()) * (1 - p) ** (g - int(o.sum())) for o, k in zip(outcomes, kept) if k)
    assert mixed_group_chance(p, g) == pytest.approx(chance)


def group(pair: StartState, successes: int, size: int = 8) -> list[Episode]:
    return outcomes(pair.task_id, [True] * successes + [False] * (size - successes), pair.init_state)


def test_band_sampler_explores_every_state_first_then_draws_the_learnable_band():
    env = ReachEnv(ReachConfig(targets=(-0.5, 0.5), num_init_states=12, num_eval=2))  # 2 tasks x 10 train states
    sampler = BandSampler(env.tasks(), seed=0, group_size=8)
    n = len(sampler.pairs)
    assert n == 20
    first = sampler.draw(n)
    assert sorted(first, key=str) == sorted(sampler.pairs, key=str)  # one call: distinct pairs, all unseen alike
    # outcomes: a quarter of the states in the band (3 of 8 succeed), the rest all-fail or all-success
    band = set(sampler.pairs[::4])
    for i, pair in enumerate(sampler.pairs):
        sampler.observe(group(pair, 3 if pair in band else (0 if i % 2 else 8)))
    assert sampler.in_band() == pytest.approx(len(band) / n)
    draws = [p for _ in range(400) for p in sampler.draw(4)]
    share = sum(p in band for p in draws) / len(draws)
    w_band = mixed_group_chance(3 / 8, 8)
    expected = len(band) * w_band / (len(band) * w_band + (n - len(band)) * sampler.floor)
    assert share == pytest.approx(expected, abs=0.04) and share > 0.75
    assert set(draws) == set(sampler.pairs)  # the flat ones are still revisited (floored, never dropped)
    # an unseen state outweighs every observed one
    fresh = BandSampler(env.tasks(), seed=0, group_size=8)
    fresh.observe(group(sampler.pairs[0], 4))
    w = fresh.weights()
    assert w[0] == pytest.approx(mixed_group_chance(0.5, 8)) and (w[1:] == 1.0).all()


def test_band_sampler_follows_a_state_whose_success_changes_and_resumes():
    env = ReachEnv(ReachConfig(targets=(-0.5, 0.5), num_init_states=12, num_eval=2))
    sampler = BandSampler(env.tasks(), seed=1, group_size=8, smoothing=0.5)
    pair = sampler.pairs[5]
    sampler.observe(group(pair, 0))
    assert sampler.weights()[5] == sampler.floor  # all-fail: out of the band
    sampler.observe(group(pair, 8))
    assert sampler.success[5] == pytest.approx(0.5)  # halfway to the new rate
    assert sampler.weights()[5] == pytest.approx(mixed_group_chance(0.5, 8))
    # failed episodes do not count; other tasks' episodes with the same index are another state
    sampler.observe([Episode(pair.task_id, "", pair.init_state, 0, success=True, failure="crash")])
    assert sampler.success[5] == pytest.approx(0.5)
    state = sampler.state_dict()
    nxt = sampler.draw(30)
    other = BandSampler(env.tasks(), seed=99, group_size=8)
    other.load_state_dict(state)
    assert other.draw(30) == nxt
    with pytest.raises(Exception, match="covers 20 start states, the env offers 2"):
        BandSampler(ReachEnv(ReachConfig(targets=(0.5,), num_init_states=3, num_eval=1)).tasks(), 0).load_state_dict(state)


def test_band_sampler_keeps_more_groups_than_uniform_on_a_simulated_policy():
    """Each state has a fixed true success rate (most 0 or 1, a few in between); groups of 8 are
    simulated and filtered by the real dynamic-sampling filter. The band sampler wastes fewer groups."""
    env = ReachEnv(ReachConfig(targets=(-0.5, 0.0, 0.5), num_init_states=40, num_eval=10))
    rng = np.random.default_rng(7)
    kinds = rng.choice(3, size=90, p=[0.45, 0.35, 0.2])
    true_p = {}
    for i, t in enumerate(env.tasks()):
        for s in t.train_init_states:
            k = kinds[len(true_p)]
            true_p[StartState(t.task_id, s)] = 0.0 if k == 0 else 1.0 if k == 1 else float(rng.uniform(0.2, 0.8))

    def kept_share(sampler) -> float:
        kept = total = 0
        for _ in range(60):
            starts = sampler.draw(8)
            episodes = [ep for pair in starts for ep in group(pair, int(rng.binomial(8, true_p[pair])))]
            sampler.observe(episodes)
            rewards = torch.tensor([float(ep.success) for ep in episodes])
            mask = algos.group_keep_mask(rewards, torch.arange(len(starts)).repeat_interleave(8))
            kept += int(mask.sum()) // 8
            total += len(starts)
        return kept / total

    uniform, band = kept_share(UniformSampler(env.tasks(), 0)), kept_share(BandSampler(env.tasks(), 0))
    assert uniform == pytest.approx(0.2, abs=0.08)
    assert band > uniform + 0.25, (uniform, band)
