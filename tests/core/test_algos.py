"""pushcut.algos against hand-computed values and properties.

The independent cross-check against verl's own implementation is in
test_algos_vs_verl.py.
"""

import math

import pytest
import torch

from pushcut import algos
from pushcut.algos import (
    agg_loss,
    aggregation_weights,
    check_finite,
    entropy_from_logits,
    get_advantage_estimator,
    get_loss_aggregation,
    get_policy_loss,
    group_keep_mask,
    group_stats,
    kl_penalty,
    masked_mean,
    vanilla_policy_loss,
    weighted_loss,
)

AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def ids(*values):
    return torch.tensor(values, dtype=torch.long)


# --------------------------------------------------------------------------- #
# Advantages
# --------------------------------------------------------------------------- #


def test_grpo_hand_computed():
    # Group [1, 0, 0, 1]: mean 0.5; unbiased var = 4 * 0.25 / 3 = 1/3, std = 0.57735.
    # A = +-0.5 / (0.57735 + 1e-6) = +-0.866024.
    adv = get_advantage_estimator("grpo")(t(1, 0, 0, 1), ids(0, 0, 0, 0))
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(adv, t(a, -a, -a, a))
    assert adv.shape == (4,) and adv.dtype == torch.float32


def test_grpo_two_interleaved_groups_with_arbitrary_ids():
    # Group 7: [1, 0] -> mean 0.5, unbiased std sqrt(0.5) = 0.70711 -> +-0.70711.
    # Group 3: [0, 0, 0] -> std 0 -> A = 0 / (0 + eps) = 0.
    adv = algos.grpo_advantages(t(1, 0, 0, 0, 0), ids(7, 3, 7, 3, 3))
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    torch.testing.assert_close(adv, t(a, 0, -a, 0, 0))


def test_rloo_hand_computed():
    # R = 1: others [0, 0, 1] mean 1/3 -> 2/3.   R = 0: others [1, 0, 1] mean 2/3 -> -2/3.
    adv = get_advantage_estimator("rloo")(t(1, 0, 0, 1), ids(0, 0, 0, 0))
    torch.testing.assert_close(adv, t(2 / 3, -2 / 3, -2 / 3, 2 / 3))
    # Group of 3 with rewards [1, 1, 0]: 1 - 1/2 = 0.5 (twice), 0 - 1 = -1.
    torch.testing.assert_close(algos.rloo_advantages(t(1, 1, 0), ids(5, 5, 5)), t(0.5, 0.5, -1))


def test_drgrpo_hand_computed():
    # R - mean, no std: mean 0.5 -> +-0.5; group 1 has mean 0.25.
    adv = get_advantage_estimator("drgrpo")(t(1, 0, 0, 1, 1, 0, 0, 0), ids(0, 0, 0, 0, 1, 1, 1, 1))
    torch.testing.assert_close(adv, t(0.5, -0.5, -0.5, 0.5, 0.75, -0.25, -0.25, -0.25))


def test_singleton_groups_follow_verl_fallback():
    # verl: a group of one has mean 0 (and std 1 for grpo), so A = R / (1 + eps) resp. R.
    r, g = t(1, 0, 1), ids(0, 1, 1)
    torch.testing.assert_close(algos.grpo_advantages(r, g)[0], torch.tensor(1 / (1 + 1e-6)))
    torch.testing.assert_close(algos.drgrpo_advantages(r, g)[0], torch.tensor(1.0))
    torch.testing.assert_close(algos.rloo_advantages(r, g)[0], torch.tensor(1.0))


def test_integer_and_bool_rewards_give_float_advantages():
    for r in (ids(1, 0), torch.tensor([True, False])):
        adv = algos.grpo_advantages(r, ids(0, 0))
        assert adv.dtype == torch.get_default_dtype()
        torch.testing.assert_close(adv, t(1, -1) * 0.5 / (math.sqrt(0.5) + 1e-6))


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo"])
@pytest.mark.parametrize("seed", range(5))
def test_advantages_sum_to_zero_per_group(name, seed):
    gen = torch.Generator().manual_seed(seed)
    group_size = int(torch.randint(2, 9, (), generator=gen))
    n_groups = 6
    rewards = torch.randint(0, 2, (n_groups * group_size,), generator=gen).float()
    group_index = torch.arange(n_groups).repeat_interleave(group_size)
    perm = torch.randperm(rewards.numel(), generator=gen)  # groups need not be contiguous
    rewards, group_index = rewards[perm], group_index[perm]
    adv = get_advantage_estimator(name)(rewards, group_index)
    sums = torch.zeros(n_groups).index_add_(0, group_index, adv)
    torch.testing.assert_close(sums, torch.zeros(n_groups), atol=1e-5, rtol=0)
    # All-equal groups carry no signal.
    stats = group_stats(rewards, group_index)
    flat = (stats.mean == 0) | (stats.mean == 1)
    assert torch.all(adv[flat[stats.inverse]] == 0)


def test_grpo_normalises_to_unit_unbiased_std():
    rewards = t(1, 0, 0, 0, 1, 1, 0, 1)
    adv = algos.grpo_advantages(rewards, torch.zeros(8, dtype=torch.long), eps=0.0)
    torch.testing.assert_close(adv.std(), torch.tensor(1.0))


def test_advantage_input_errors():
    with pytest.raises(ValueError, match="rewards and group_index must both be 1-D"):
        algos.grpo_advantages(t(1, 0, 1), ids(0, 0))
    with pytest.raises(ValueError, match="1-D"):
        algos.rloo_advantages(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        algos.drgrpo_advantages(t(1, 0), t(0, 0))
    with pytest.raises(ValueError, match="empty"):
        algos.grpo_advantages(t(), ids())
    with pytest.raises(FloatingPointError, match="rewards contains NaN/inf"):
        algos.grpo_advantages(t(1, float("nan")), ids(0, 0))


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'gae'.*'grpo', 'rloo', 'drgrpo'"):
        get_advantage_estimator("gae")
    with pytest.raises(ValueError, match=r"unknown policy loss 'gspo'.*'vanilla'"):
        get_policy_loss("gspo")
    with pytest.raises(ValueError, match=r"unknown loss aggregation mode 'mean'.*'token-mean'"):
        get_loss_aggregation("mean")
    with pytest.raises(ValueError, match=r"unknown loss aggregation mode"):
        aggregation_weights(torch.ones(1, 1), "seq-mean")
    with pytest.raises(ValueError, match=r"unknown KL penalty kind 'full'.*'low_var_kl'"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "full")


# --------------------------------------------------------------------------- #
# Dynamic-sampling filter
# --------------------------------------------------------------------------- #


def test_filter_drops_all_fail_and_all_success_groups():
    # group 0: [1, 1] all success -> drop; group 1: [0, 0] all fail -> drop; group 2: [1, 0] keep.
    keep = group_keep_mask(ids(1, 1, 0, 0, 1, 0), ids(0, 0, 1, 1, 2, 2))
    assert keep.dtype == torch.bool
    assert keep.tolist() == [False, False, False, False, True, True]


def test_filter_bounds_are_inclusive():
    # 11 groups of 10 episodes, group k has k successes: success rate k / 10.
    group_index = torch.arange(11).repeat_interleave(10)
    rewards = (torch.arange(10).repeat(11) < group_index).float()

    def kept_groups(**bounds):
        keep = group_keep_mask(rewards, group_index, **bounds)
        return sorted(set(group_index[keep].tolist()))

    assert kept_groups() == list(range(1, 10))
    assert kept_groups(accuracy_lower=0.1, accuracy_upper=0.9) == list(range(1, 10))  # SimpleVLA-RL's bounds
    # 7/10 must compare equal to the 0.7 bound (and 2/10 to 0.2): inclusive on both ends.
    assert kept_groups(accuracy_lower=0.2, accuracy_upper=0.7) == [2, 3, 4, 5, 6, 7]
    # Bounds at 0 / 1 still never keep flat groups.
    assert kept_groups(accuracy_lower=0.0, accuracy_upper=0.0) == []
    # Whole groups: each kept group keeps all 10 of its episodes.
    assert int(group_keep_mask(rewards, group_index, accuracy_lower=0.5, accuracy_upper=0.5).sum()) == 10


def test_filter_with_group_size_8_and_paper_bounds():
    # G = 8: success counts 1..7 (rates 0.125 .. 0.875) are inside [0.1, 0.9].
    group_index = torch.arange(9).repeat_interleave(8)
    rewards = (torch.arange(8).repeat(9) < group_index).float()
    keep = group_keep_mask(rewards, group_index, 0.1, 0.9)
    assert sorted(set(group_index[keep].tolist())) == list(range(1, 8))


def test_filter_bad_bounds():
    for lo, hi in [(0.6, 0.4), (-0.1, 0.5), (0.2, 1.5)]:
        with pytest.raises(ValueError, match="accuracy_lower <= accuracy_upper"):
            group_keep_mask(t(1, 0), ids(0, 0), lo, hi)


def test_group_stats():
    stats = group_stats(t(1, 0, 1, 1), ids(9, 2, 9, 2))
    assert stats.group_ids.tolist() == [2, 9]
    assert stats.counts.tolist() == [2, 2]
    assert stats.mean.tolist() == [0.5, 1.0]
    assert stats.inverse.tolist() == [1, 0, 1, 0]


# --------------------------------------------------------------------------- #
# Policy loss
# --------------------------------------------------------------------------- #


def _hand_case():
    """Six elements, in two rows of three; the last is padding with a NaN log-prob.

    elem  ratio  A    what happens (clip_ratio_low 0.2, clip_ratio_high 0.28)      loss    clipped  d loss/d log_prob
    e0    1.5   +1    above 1 + 0.28 with A > 0: clipped to 1.28, -1.28 * 1        -1.28   yes      0
    e1    0.5   -1    below 1 - 0.2  with A < 0: clipped to 0.8,  -(0.8 * -1)       0.8    yes      0
    e2    1.1   +2    inside: -1.1 * 2                                             -2.2    no       -A r = -2.2
    e3    0.5   +1    below 0.8 but A > 0: min picks r A = 0.5 (unclipped)         -0.5    no       -0.5
    e4    1.5   -1    above 1.28 but A < 0: min picks r A = -1.5 (unclipped)        1.5    no       +1.5
    e5    pad                                                                       0      -        0
    """
    ratio = t(1.5, 0.5, 1.1, 0.5, 1.5, 1.0).reshape(2, 3)
    old_log_prob = torch.full((2, 3), -2.0)
    log_prob = (old_log_prob + ratio.log()).detach()
    log_prob[1, 2] = float("nan")
    log_prob.requires_grad_(True)
    advantages = t(1, -1, 2, 1, -1, 0).reshape(2, 3)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    return log_prob, old_log_prob, advantages, mask


def test_vanilla_hand_computed():
    log_prob, old_log_prob, advantages, mask = _hand_case()
    out = get_policy_loss("vanilla")(log_prob, old_log_prob, advantages, mask, clip_ratio_low=0.2, clip_ratio_high=0.28)
    torch.testing.assert_close(out.loss_mat, t(-1.28, 0.8, -2.2, -0.5, 1.5, 0.0).reshape(2, 3))
    assert out.loss_mat.shape == (2, 3)
    # 2 of the 5 real elements are clipped.
    torch.testing.assert_close(out.pg_clipfrac, torch.tensor(0.4))
    # ppo_kl = mean(old - new) = -mean(log ratio) over the 5 real elements.
    kl = -(math.log(1.5) + math.log(0.5) + math.log(1.1) + math.log(0.5) + math.log(1.5)) / 5
    torch.testing.assert_close(out.ppo_kl, torch.tensor(kl))
    assert float(out.pg_clipfrac_lower) == 0.0  # dual clip off
    expected_metrics = {"actor/pg_clipfrac": 0.4, "actor/ppo_kl": kl, "actor/pg_clipfrac_lower": 0.0}
    assert out.metrics() == pytest.approx(expected_metrics)

    # Gradient: zero exactly where clipped, -A * r elsewhere, zero on padding.
    agg_loss(out.loss_mat, mask, "token-sum").backward()
    torch.testing.assert_close(log_prob.grad, t(0, 0, -2.2, -0.5, 1.5, 0).reshape(2, 3))
    assert out.pg_clipfrac.grad_fn is None and out.ppo_kl.grad_fn is None


def test_vanilla_default_clip_ratios_are_the_recipes():
    log_prob, old_log_prob, advantages, mask = _hand_case()
    out = vanilla_policy_loss(log_prob, old_log_prob, advantages, mask)
    assert out.loss_mat[0, 0].item() == pytest.approx(-1.28)  # 1 + 0.28
    assert out.loss_mat[0, 1].item() == pytest.approx(0.8)  # 1 - 0.2


def test_dual_clip():
    # A = -1, ratio 5: clipped loss = max(5, 0.8) = 5, dual clip caps it at -A * c = 3.
    # A = -1, ratio 2: loss 2 < 3, not capped.  A = +1, ratio 5: dual clip does not apply.
    old = torch.zeros(1, 3)
    log_prob = t(math.log(5), math.log(2), math.log(5)).reshape(1, 3).requires_grad_(True)
    adv = t(-1, -1, 1).reshape(1, 3)
    mask = torch.ones(1, 3)
    out = vanilla_policy_loss(log_prob, old, adv, mask, clip_ratio_c=3.0)
    torch.testing.assert_close(out.loss_mat, t(3.0, 2.0, -1.28).reshape(1, 3))
    torch.testing.assert_close(out.pg_clipfrac_lower, torch.tensor(1 / 3))
    torch.testing.assert_close(out.pg_clipfrac, torch.tensor(1 / 3))  # only the A > 0 element
    out.loss_mat.sum().backward()
    torch.testing.assert_close(log_prob.grad, t(0, 2, 0).reshape(1, 3))
    off = vanilla_policy_loss(log_prob, old, adv, mask)
    torch.testing.assert_close(off.loss_mat, t(5.0, 2.0, -1.28).reshape(1, 3))


@pytest.mark.parametrize("seed", range(3))
def test_vanilla_gradient_is_zero_exactly_where_clipped(seed):
    gen = torch.Generator().manual_seed(seed)
    B, T = 6, 12
    old = -torch.rand(B, T, generator=gen) * 3
    log_prob = (old + torch.randn(B, T, generator=gen) * 0.4).requires_grad_(True)
    adv = torch.randn(B, T, generator=gen)
    mask = torch.ones(B, T, dtype=torch.bool)
    out = vanilla_policy_loss(log_prob, old, adv, mask, 0.2, 0.28)
    out.loss_mat.sum().backward()
    ratio = (log_prob - old).exp().detach()
    clipped = ((adv > 0) & (ratio > 1.28)) | ((adv < 0) & (ratio < 0.8))
    assert clipped.any() and (~clipped).any()
    assert torch.all(log_prob.grad[clipped] == 0)
    torch.testing.assert_close(log_prob.grad[~clipped], (-adv * ratio)[~clipped])
    torch.testing.assert_close(out.pg_clipfrac, clipped.float().mean())


def test_vanilla_extreme_log_ratio_does_not_overflow():
    # log ratio +-1000 is clamped to +-20 (as verl): ratio e^20 resp. e^-20, finite loss.
    # A = -1, ratio e^20: unclipped side, loss e^20.  A = +1, ratio e^-20: loss -e^-20.
    log_prob, adv = t(1000.0, -1000.0).reshape(1, 2), t(-1, 1).reshape(1, 2)
    out = vanilla_policy_loss(log_prob, torch.zeros(1, 2), adv, torch.ones(1, 2))
    assert torch.isfinite(out.loss_mat).all()
    torch.testing.assert_close(out.loss_mat, t(math.exp(20), -math.exp(-20)).reshape(1, 2))


def test_vanilla_detaches_old_log_prob_and_advantages():
    old = torch.zeros(1, 2, requires_grad=True)
    adv = torch.ones(1, 2, requires_grad=True)
    log_prob = torch.zeros(1, 2, requires_grad=True)
    vanilla_policy_loss(log_prob, old, adv, torch.ones(1, 2)).loss_mat.sum().backward()
    assert old.grad is None and adv.grad is None and log_prob.grad is not None


def test_vanilla_bf16_is_upcast():
    log_prob = torch.zeros(1, 2, dtype=torch.bfloat16)
    out = vanilla_policy_loss(log_prob, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2))
    assert out.loss_mat.dtype == torch.float32


def test_vanilla_shape_and_parameter_errors():
    x = torch.zeros(2, 3)
    message = r"log_prob, old_log_prob, advantages, mask must have the same 2-D shape.*advantages \(2,\)"
    with pytest.raises(ValueError, match=message):
        vanilla_policy_loss(x, x, torch.zeros(2), x)
    with pytest.raises(ValueError, match="same 2-D shape"):
        vanilla_policy_loss(x, x, x, torch.ones(3, 2))
    with pytest.raises(ValueError, match="same 2-D shape"):
        vanilla_policy_loss(torch.zeros(6), torch.zeros(6), torch.zeros(6), torch.ones(6))
    with pytest.raises(ValueError, match="clip_ratio_low"):
        vanilla_policy_loss(x, x, x, x, clip_ratio_low=1.0)
    with pytest.raises(ValueError, match="clip_ratio_high"):
        vanilla_policy_loss(x, x, x, x, clip_ratio_high=-0.1)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        vanilla_policy_loss(x, x, x, x, clip_ratio_c=0.5)


# --------------------------------------------------------------------------- #
# Aggregation
# --------------------------------------------------------------------------- #


def _ragged():
    """Rows of 4, 2 and 0 valid elements; padding holds NaN, which must not leak."""
    nan = float("nan")
    loss_mat = t(1, 2, 3, 4, 5, 6, nan, nan, nan, nan, nan, nan).reshape(3, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    return loss_mat, mask


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 21 / 6),  # (1+2+3+4+5+6) / 6 valid elements = 3.5
        ("token-sum", 21.0),
        ("seq-mean-token-mean", (2.5 + 5.5) / 2),  # row means 10/4 and 11/2; the empty row is left out
        ("seq-mean-token-sum", (10 + 11) / 2),  # row sums, mean over the 2 non-empty rows = 10.5
        ("seq-mean-token-sum-norm", (10 + 11) / 2 / 4),  # ... / T (= 4) = 2.625
    ],
)
def test_aggregation_hand_computed(mode, expected):
    loss_mat, mask = _ragged()
    assert agg_loss(loss_mat, mask, mode).item() == pytest.approx(expected)
    assert get_loss_aggregation(mode)(loss_mat, mask).item() == pytest.approx(expected)
    assert get_loss_aggregation(mode)(loss_mat, mask.float()).item() == pytest.approx(expected)


def test_seq_mean_token_sum_norm_constant_scale():
    loss_mat, mask = _ragged()
    assert agg_loss(loss_mat, mask, "seq-mean-token-sum-norm", loss_scale_factor=7).item() == pytest.approx(1.5)


def test_aggregation_default_is_token_mean_and_empty_mask_gives_zero():
    loss_mat, mask = _ragged()
    assert agg_loss(loss_mat, mask).item() == pytest.approx(3.5)
    for mode in AGG_MODES:
        assert agg_loss(loss_mat, torch.zeros_like(mask), mode).item() == 0.0


def test_aggregation_shape_errors():
    with pytest.raises(ValueError, match="same 2-D shape"):
        agg_loss(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="2-D"):
        aggregation_weights(torch.ones(5), "token-mean")
    with pytest.raises(ValueError, match="loss_scale_factor"):
        aggregation_weights(torch.ones(2, 2), "seq-mean-token-sum-norm", loss_scale_factor=0)


def _random_minibatch(seed, B=10, T=9):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    lengths[0] = T  # at least one full row; some rows may be empty
    mask = torch.arange(T)[None, :] < lengths[:, None]
    old = -torch.rand(B, T, generator=gen) * 2
    log_prob = old + torch.randn(B, T, generator=gen) * 0.3
    adv = torch.randn(B, 1, generator=gen).expand(B, T).contiguous()
    return log_prob, old, adv, mask


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("seed", range(3))
def test_micro_batch_weights_reproduce_minibatch_loss_and_gradient(mode, seed):
    log_prob, old, adv, mask = _random_minibatch(seed)

    # Whole minibatch at once.
    full = log_prob.clone().requires_grad_(True)
    loss_full = agg_loss(vanilla_policy_loss(full, old, adv, mask).loss_mat, mask, mode)
    loss_full.backward()

    # Weights computed once over the minibatch, then micro-batches of uneven size.
    weights = aggregation_weights(mask, mode)
    assert weights.shape == mask.shape
    assert torch.all(weights[~mask] == 0)
    micro = log_prob.clone().requires_grad_(True)
    total = torch.zeros(())
    for rows in torch.tensor_split(torch.arange(mask.shape[0]), [3, 4, 8]):
        out = vanilla_policy_loss(micro[rows], old[rows], adv[rows], mask[rows])
        part = weighted_loss(out.loss_mat, weights[rows])
        part.backward()
        total += part.detach()

    torch.testing.assert_close(total, loss_full.detach())
    torch.testing.assert_close(micro.grad, full.grad)


def test_naive_micro_batch_means_differ_which_is_why_weights_exist():
    log_prob, old, adv, mask = _random_minibatch(0)
    loss_mat = vanilla_policy_loss(log_prob, old, adv, mask).loss_mat
    halves = [slice(0, 5), slice(5, 10)]
    naive = sum(agg_loss(loss_mat[s], mask[s]) for s in halves) / 2
    assert not torch.isclose(naive, agg_loss(loss_mat, mask))


# --------------------------------------------------------------------------- #
# KL, entropy, masked reductions, finiteness
# --------------------------------------------------------------------------- #


def test_kl_penalty_hand_computed():
    # log p = 0, log p_ref = -1: diff 1.
    lp, ref = torch.zeros(1, 1), torch.full((1, 1), -1.0)
    assert kl_penalty(lp, ref, "kl").item() == pytest.approx(1.0)
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_penalty(ref, lp, "abs").item() == pytest.approx(1.0)
    assert kl_penalty(lp, ref, "mse").item() == pytest.approx(0.5)
    # k3 with log r = log p_ref - log p = -1: e^-1 + 1 - 1 = 0.36788.
    assert kl_penalty(lp, ref, "low_var_kl").item() == pytest.approx(math.exp(-1))
    assert kl_penalty(lp, ref).item() == pytest.approx(math.exp(-1))  # default kind
    # Clamped: log r = 100 -> 20 -> e^20 - 21, then capped at 10.
    assert kl_penalty(torch.zeros(1), torch.full((1,), 100.0), "k3").item() == 10.0
    with pytest.raises(ValueError, match="same shape"):
        kl_penalty(torch.zeros(2, 3), torch.zeros(2, 4), "kl")


def test_entropy_from_logits():
    # Uniform over 4 -> log 4; a masked-out (-inf) vocabulary entry contributes 0.
    logits = torch.stack([torch.zeros(4), t(0.0, 0.0, float("-inf"), float("-inf"))])
    torch.testing.assert_close(entropy_from_logits(logits), t(math.log(4), math.log(2)))
    z = torch.randn(3, 5, 7)
    p = z.softmax(-1)
    torch.testing.assert_close(entropy_from_logits(z), -(p * p.log()).sum(-1))
    assert entropy_from_logits(z).shape == (3, 5)


def test_masked_mean():
    x = t(1, 2, 3, float("nan")).reshape(2, 2)
    mask = torch.tensor([[True, True], [True, False]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    torch.testing.assert_close(masked_mean(x, mask, dim=1), t(1.5, 3.0))
    torch.testing.assert_close(masked_mean(x, mask, dim=0), t(2.0, 2.0))
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0
    # A float mask weighs: (1*1 + 2*3) / (1 + 3).
    assert masked_mean(t(1, 2), t(1, 3)).item() == pytest.approx(7 / 4)
    with pytest.raises(ValueError, match="same shape"):
        masked_mean(x, mask[0])


def test_check_finite():
    check_finite("log_prob", torch.zeros(2, 3))
    bad = torch.zeros(2, 3)
    bad[1, 2] = float("nan")
    bad[0, 1] = float("inf")
    message = r"^log_prob contains NaN/inf: 1 NaN and 1 inf .* \(first at index \(0, 1\)\)"
    with pytest.raises(FloatingPointError, match=message):
        check_finite("log_prob", bad)
    # Padding is allowed to hold garbage when a mask says so.
    check_finite("advantages", bad, mask=torch.tensor([[1, 0, 1], [1, 1, 0]]))
    with pytest.raises(FloatingPointError, match="advantages contains NaN/inf"):
        check_finite("advantages", bad, mask=torch.ones(2, 3))
