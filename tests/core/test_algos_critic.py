"""PPO with a critic in pushcut.algos: GAE over chunks, the clipped value loss, explained
variance, against hand-computed values and properties. The cross-check against verl's
``compute_gae_advantage_return`` / ``compute_value_loss`` is in test_algos_vs_verl.py."""

import math

import pytest
import torch

from pushcut import algos
from pushcut.algos import clipped_value_loss, explained_variance, gae_advantages, masked_whiten, terminal_rewards


def test_terminal_rewards_put_the_outcome_at_each_episodes_last_chunk():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    out = terminal_rewards(torch.tensor([1.0, 1.0, 0.0]), mask)
    assert out.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="row of the mask is empty"):
        terminal_rewards(torch.tensor([1.0, 0.0]), torch.tensor([[1, 0], [0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match=r"rewards must be \(N,\) and mask \(N, C\)"):
        terminal_rewards(torch.tensor([1.0]), mask)


def test_gae_by_hand():
    # two episodes: 3 chunks ending in success, 2 chunks ending in failure (third chunk is padding)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    rewards = terminal_rewards(torch.tensor([1.0, 0.0]), mask)
    values = torch.tensor([[0.5, 0.6, 0.8], [0.2, 0.1, 9.0]])  # 9.0 sits on padding and must not matter
    out = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8, whiten=False)
    # row 0: d2 = 1 - 0.8 = 0.2; d1 = 0.9*0.8 - 0.6 = 0.12; d0 = 0.9*0.6 - 0.5 = 0.04
    #        A2 = 0.2; A1 = 0.12 + 0.72*0.2 = 0.264; A0 = 0.04 + 0.72*0.264 = 0.23008
    # row 1: d1 = 0 - 0.1 = -0.1; d0 = 0.9*0.1 - 0.2 = -0.11; A1 = -0.1; A0 = -0.11 + 0.72*(-0.1) = -0.182
    torch.testing.assert_close(out.advantages[0], torch.tensor([0.23008, 0.264, 0.2]))
    torch.testing.assert_close(out.advantages[1, :2], torch.tensor([-0.182, -0.1]))
    assert out.advantages[1, 2] == 0
    torch.testing.assert_close(out.returns[mask], (out.advantages + values)[mask])


def test_gae_limits_are_monte_carlo_and_one_step_td():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    rewards = terminal_rewards(torch.tensor([1.0, 0.0]), mask)
    values = torch.tensor([[0.1, 0.4, 0.3, 0.9], [0.7, 0.2, 0.0, 0.0]])
    # gamma = lam = 1: every chunk's advantage is the episode's outcome minus its value
    mc = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0, whiten=False)
    torch.testing.assert_close(mc.advantages[mask], (torch.tensor([[1.0] * 4, [0.0] * 4]) - values)[mask])
    torch.testing.assert_close(mc.returns[mask], torch.tensor([1.0, 1, 1, 1, 0, 0]))
    # lam = 0: the one-step TD error r_c + gamma V_{c+1} - V_c, with V after the end = 0
    td = gae_advantages(rewards, values, mask, gamma=0.5, lam=0.0, whiten=False)
    expected = torch.tensor([[0.5 * 0.4 - 0.1, 0.5 * 0.3 - 0.4, 0.5 * 0.9 - 0.3, 1 - 0.9], [0.5 * 0.2 - 0.7, -0.2, 0, 0]])
    torch.testing.assert_close(td.advantages[mask], expected[mask])


def test_gae_whitening_normalises_over_the_mask_only():
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(6, 9, generator=gen) > 0.3
    mask[:, 0] = True
    values = torch.rand(6, 9, generator=gen)
    rewards = terminal_rewards((torch.rand(6, generator=gen) > 0.5).float(), mask)
    raw = gae_advantages(rewards, values, mask, whiten=False)
    white = gae_advantages(rewards, values, mask, whiten=True)
    a = white.advantages[mask]
    assert float(a.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(a.std()) == pytest.approx(1.0, abs=1e-3)  # unbiased std, as verl's masked_var
    torch.testing.assert_close(white.advantages, masked_whiten(raw.advantages, mask))
    torch.testing.assert_close(white.returns, raw.returns)  # returns are never whitened


def test_gae_refuses_bad_input():
    ones = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        gae_advantages(ones, ones, ones, gamma=1.5)
    with pytest.raises(ValueError, match="must have the same 2-D shape"):
        gae_advantages(ones, torch.ones(2, 4), ones)
    with pytest.raises(FloatingPointError, match="values contains NaN"):
        gae_advantages(ones, torch.full((2, 3), float("nan")), ones)


def test_clipped_value_loss_by_hand_and_its_gradient():
    old = torch.tensor([[0.4, 0.4, 0.4, 0.4]])
    returns = torch.tensor([[1.0, 1.0, 0.0, 0.5]])
    values = torch.tensor([[0.5, 1.0, 0.9, 0.3]], requires_grad=True)
    out = clipped_value_loss(values, old, returns, torch.ones(1, 4, dtype=torch.bool), cliprange_value=0.2)
    # 0: inside the range: 0.5*(0.5-1)^2 = 0.125
    # 1: v=1.0 clipped to 0.6: max(0, 0.16) -> 0.08, and no gradient (the clipped branch is constant)
    # 2: v=0.9 clipped to 0.6: max(0.81, 0.36) -> 0.405, gradient (v - R) = 0.9
    # 3: inside: 0.5*(0.3-0.5)^2 = 0.02
    torch.testing.assert_close(out.loss_mat, torch.tensor([[0.125, 0.08, 0.405, 0.02]]))
    assert float(out.vf_clipfrac) == pytest.approx(0.25)
    out.loss_mat.sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([[-0.5, 0.0, 0.9, -0.2]]))
    masked = clipped_value_loss(values, old, returns, torch.tensor([[True, False, True, False]]), 0.2)
    assert masked.loss_mat[0, 1] == 0 and masked.loss_mat[0, 3] == 0
    with pytest.raises(ValueError, match="cliprange_value must be > 0"):
        clipped_value_loss(values, old, returns, torch.ones(1, 4), cliprange_value=0.0)


def test_explained_variance():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    returns = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    assert float(explained_variance(returns, returns, mask)) == pytest.approx(1.0)
    mean = algos.masked_mean(returns, mask)
    assert float(explained_variance(torch.full_like(returns, float(mean)), returns, mask)) == pytest.approx(0.0, abs=1e-6)
    # by hand: residual r - v over the mask = [0.5, 0, 0, -0.5, 0.5], mean 0.1, squared deviations
    # sum to 0.70; returns [1, 0, 1, 0, 1], mean 0.6, squared deviations sum to 1.2 (both / 4)
    values = torch.tensor([[0.5, 0.0, 1.0], [0.5, 0.5, 0.0]])
    assert float(explained_variance(values, returns, mask)) == pytest.approx(1 - 0.70 / 1.2)
    assert math.isnan(float(explained_variance(values, torch.ones(2, 3), mask)))


def test_critic_registries_and_needs_values():
    assert algos.needs_values("gae") and not algos.needs_values("grpo")
    assert algos.get_value_advantage_estimator("gae") is gae_advantages
    assert algos.get_value_loss("clipped") is clipped_value_loss
    with pytest.raises(ValueError, match="unknown value loss 'huber'; valid names: 'clipped'"):
        algos.get_value_loss("huber")
