"""Start-state samplers (recipe step 1): the registry, uniform passes, mixed-outcome weighting."""

import numpy as np
import pytest
import torch

from pushcut import algos
from pushcut.errors import ConfigError
from pushcut.rollout import Episode
from pushcut.sampling import SAMPLERS, MixedSampler, UniformSampler, make_sampler, mixed_group_chance
from pushcut.toys import ReachConfig, ReachEnv


def test_the_registry_names_every_sampler_and_refuses_others():
    env = ReachEnv(ReachConfig(num_init_states=10, num_eval=3))
    assert set(SAMPLERS) == {"uniform", "mixed"}
    assert isinstance(make_sampler("mixed", env.tasks(), 0), MixedSampler)
    with pytest.raises(ConfigError, match="must be one of uniform, mixed, got 'greedy'"):
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


def outcomes(task_id: str, successes: list[bool]) -> list[Episode]:
    return [Episode(task_id, "", 0, 0, success=s) for s in successes]


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
