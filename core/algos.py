"""The RL math of the recipe: pure functions over tensors.

Everything the trainer needs to turn finished episodes into a loss lives here,
with no state, no config objects and no device assumptions:

* advantage estimators over episodes (``grpo``, ``rloo``, ``drgrpo``), and
  over the chunks of episodes with a learned critic (``gae``, PPO),
* the clipped value loss of the critic, explained variance,
* the dynamic-sampling group filter,
* the clipped policy loss (``vanilla``: PPO clip with asymmetric "clip-higher"
  bounds, optional dual clip),
* loss aggregation (``token-mean``, ``seq-mean-token-mean``, ...) and the
  per-element weights that make micro-batch gradient accumulation exact,
* the KL penalty estimators (off in the recipe), entropy, masked reductions.

Shapes: ``N`` episodes, ``B`` rows of a (micro-)batch, ``T`` action elements
per row (tokens for a token VLA). Masks are bool or float ``(B, T)``, nonzero
where the element is real (not padding).

Variants are looked up by name (``get_advantage_estimator``,
``get_policy_loss``, ``get_loss_aggregation``) so the trainer holds no
``if loss_type == ...`` chains. Semantics and numerics follow verl's
``verl.trainer.ppo.core_algos`` (0.9.1), checked in
``tests/core/test_algos_vs_verl.py``; the few deliberate differences are
listed in the docstrings ("Differs from verl").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_PENALTIES",
    "LOSS_AGGREGATIONS",
    "POLICY_LOSSES",
    "VALUE_ADVANTAGE_ESTIMATORS",
    "VALUE_LOSSES",
    "GroupStats",
    "PolicyLossOutput",
    "ValueAdvantages",
    "ValueLossOutput",
    "agg_loss",
    "aggregation_weights",
    "check_finite",
    "drgrpo_advantages",
    "clipped_value_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae_advantages",
    "get_value_advantage_estimator",
    "get_value_loss",
    "get_advantage_estimator",
    "get_loss_aggregation",
    "get_policy_loss",
    "group_keep_mask",
    "group_stats",
    "grpo_advantages",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "needs_values",
    "rloo_advantages",
    "terminal_rewards",
    "vanilla_policy_loss",
    "weighted_loss",
]

# log(pi/pi_old) is clamped to [-20, 20] before exp, as verl does, so one
# wildly off element cannot overflow the ratio to inf (exp(20) ~ 4.9e8).
LOG_RATIO_CLAMP = 20.0


# --------------------------------------------------------------------------- #
# Input guards and masked reductions
# --------------------------------------------------------------------------- #


def check_finite(name: str, tensor: Tensor, mask: Tensor | None = None) -> None:
    """Raise ``FloatingPointError`` if ``tensor`` holds NaN or inf.

    Args:
        name: what the tensor is, used in the message (``"log_prob"``).
        tensor: any shape.
        mask: optional, same shape as ``tensor``; only elements where it is
            nonzero are checked (padding may legitimately hold garbage).

    This reads the result back to the host (a device sync), so call it once
    per minibatch, not inside hot loops.
    """
    bad = ~torch.isfinite(tensor)
    if mask is not None:
        _check_same_shape(**{name: tensor, "mask": mask})
        bad = bad & (mask != 0)
    n_bad = int(bad.sum())
    if n_bad:
        n_nan = int((torch.isnan(tensor) & bad).sum())
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise FloatingPointError(
            f"{name} contains NaN/inf: {n_nan} NaN and {n_bad - n_nan} inf among "
            f"{tensor.numel()} elements of shape {tuple(tensor.shape)} (first at index {first}); "
            "the policy's forward pass or the inputs feeding it diverged upstream"
        )


def _check_same_shape(ndim: int | None = None, **tensors: Tensor) -> None:
    """ValueError naming every tensor's shape unless all shapes agree (and have ``ndim`` dims)."""
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    first = next(iter(shapes.values()))
    if any(s != first for s in shapes.values()) or (ndim is not None and len(first) != ndim):
        names = ", ".join(shapes)
        want = f"the same {ndim}-D shape" if ndim is not None else "the same shape"
        got = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise ValueError(f"{names} must have {want}; got {got}")


def _as_float_mask(mask: Tensor, like: Tensor) -> Tensor:
    return mask.to(dtype=like.dtype if like.is_floating_point() else torch.float32)


def masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Sum of ``x * mask`` over ``dim`` (all dims when None).

    ``x`` and ``mask`` have the same shape; a float mask acts as weights.
    NaN/inf where the mask is zero are ignored (padding cannot poison the sum).
    """
    _check_same_shape(x=x, mask=mask)
    m = _as_float_mask(mask, x)
    return (torch.where(mask != 0, x, 0.0) * m).sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over the elements where ``mask`` is nonzero, over ``dim``.

    ``x`` and ``mask`` have the same shape; the result has ``x``'s shape with
    ``dim`` reduced (a 0-dim tensor when ``dim`` is None). Where the mask is
    empty the mean is 0 (as verl's ``masked_mean``, which divides by
    ``count + 1e-8``; here the division is exact otherwise).
    """
    count = _as_float_mask(mask, x).sum(dim=dim)
    total = masked_sum(x, mask, dim=dim)
    return total / torch.where(count != 0, count, torch.ones_like(count))


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution ``softmax(logits)``.

    Args:
        logits: ``(..., V)`` unnormalised log-probabilities; ``-inf`` entries
            (masked-out vocabulary) are allowed.

    Returns:
        ``(...)``: H = logsumexp(z) - sum_v softmax(z)_v * z_v (verl's formula).
    """
    p = torch.softmax(logits, dim=-1)
    # 0 * (-inf) is NaN; an impossible token contributes nothing to H.
    p_z = torch.where(p > 0, p * logits, 0.0)
    return torch.logsumexp(logits, dim=-1) - p_z.sum(dim=-1)


# --------------------------------------------------------------------------- #
# Groups: statistics, dynamic-sampling filter, advantage estimators
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class GroupStats:
    """Per-group summary of episode rewards.

    Attributes:
        group_ids: ``(G,)`` the distinct values of ``group_index``, sorted.
        inverse: ``(N,)`` long, position of each episode's group in ``group_ids``.
        counts: ``(G,)`` long, episodes per group (the group size).
        mean: ``(G,)`` float64, mean reward; the success rate for 0/1 rewards
            (float64 so that e.g. 7/10 compares exactly against a 0.7 bound).
    """

    group_ids: Tensor
    inverse: Tensor
    counts: Tensor
    mean: Tensor


def _check_group_inputs(rewards: Tensor, group_index: Tensor) -> None:
    if rewards.ndim != 1 or group_index.shape != rewards.shape:
        raise ValueError(
            "rewards and group_index must both be 1-D of length N (one entry per episode); "
            f"got rewards {tuple(rewards.shape)}, group_index {tuple(group_index.shape)}"
        )
    if group_index.is_floating_point() or group_index.is_complex() or group_index.dtype == torch.bool:
        raise ValueError(f"group_index must be an integer tensor (e.g. torch.long); got {group_index.dtype}")
    if rewards.numel() == 0:
        raise ValueError("rewards is empty: need at least one episode")
    check_finite("rewards", rewards)


def group_stats(rewards: Tensor, group_index: Tensor) -> GroupStats:
    """Group episodes by ``group_index`` and summarise their rewards.

    Args:
        rewards: ``(N,)`` episode rewards (0/1 in the recipe; any real allowed).
        group_index: ``(N,)`` integer; episodes with equal values form a group
            (same start state). Values need not be contiguous or sorted.
    """
    _check_group_inputs(rewards, group_index)
    group_ids, inverse, counts = torch.unique(group_index, return_inverse=True, return_counts=True)
    r = rewards.to(torch.float64)
    sums = torch.zeros(group_ids.numel(), dtype=torch.float64, device=r.device).index_add_(0, inverse, r)
    return GroupStats(group_ids=group_ids, inverse=inverse, counts=counts, mean=sums / counts)


def group_keep_mask(
    rewards: Tensor,
    group_index: Tensor,
    accuracy_lower: float = 0.0,
    accuracy_upper: float = 1.0,
) -> Tensor:
    """Dynamic-sampling filter (recipe step 4): which episodes to train on.

    An episode is kept iff the mean reward ``p`` of its group satisfies

        0 < p < 1   and   accuracy_lower <= p <= accuracy_upper.

    The first condition drops groups whose episodes all failed or all
    succeeded (for 0/1 rewards every advantage there is 0, so they only
    dilute the batch); it applies whatever the bounds. The bounds are
    inclusive and optional: SimpleVLA-RL uses 0.1 and 0.9, which with G = 8
    keeps exactly the groups with 1..7 successes. Whole groups are kept or
    dropped, never single episodes.

    Args:
        rewards: ``(N,)`` episode rewards in [0, 1].
        group_index: ``(N,)`` integer group ids (see ``group_stats``).
        accuracy_lower, accuracy_upper: inclusive bounds on a group's mean,
            ``0 <= accuracy_lower <= accuracy_upper <= 1``.

    Returns:
        ``(N,)`` bool.
    """
    if not 0.0 <= accuracy_lower <= accuracy_upper <= 1.0:
        raise ValueError(
            "need 0 <= accuracy_lower <= accuracy_upper <= 1; "
            f"got accuracy_lower={accuracy_lower}, accuracy_upper={accuracy_upper}"
        )
    stats = group_stats(rewards, group_index)
    p = stats.mean
    keep = (p > 0) & (p < 1) & (p >= accuracy_lower) & (p <= accuracy_upper)
    return keep[stats.inverse]


def _float_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.get_default_dtype()


def _group_moments(rewards: Tensor, group_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-episode reward, group size, group mean and unbiased group std, in float64.

    Returns ``(r, n, mean, std)``, each ``(N,)`` (group values gathered back to episodes);
    ``std`` is NaN for singleton groups (callers substitute verl's fallback).
    """
    stats = group_stats(rewards, group_index)
    r = rewards.to(torch.float64)
    inv, n, mean = stats.inverse, stats.counts.to(torch.float64), stats.mean
    sq = torch.zeros_like(n).index_add_(0, inv, (r - mean[inv]) ** 2)
    # Bessel-corrected (unbiased) std, as torch.std / verl; undefined for n = 1.
    std = torch.sqrt(sq / (n - 1))
    return r, n[inv], mean[inv], std[inv]


def grpo_advantages(rewards: Tensor, group_index: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantage (recipe step 5; DeepSeekMath eq. in sec. 4.1.2).

        A_i = (R_i - mean_g) / (std_g + eps)

    over the group g of episode i, with the unbiased (N-1) std, exactly as
    verl's ``compute_grpo_outcome_advantage``. A group of one episode uses
    verl's fallback mean 0, std 1, i.e. A_i = R_i / (1 + eps) (dynamic
    sampling never keeps such groups in the recipe). A group with equal
    rewards gets A = 0.

    Args:
        rewards: ``(N,)`` episode rewards.
        group_index: ``(N,)`` integer group ids.
        eps: added to the std so all-equal groups do not divide by zero.

    Returns:
        ``(N,)`` advantages in the dtype of ``rewards`` (float for int/bool).
        Computed in float64 internally.
    """
    r, n, mean, std = _group_moments(rewards, group_index)
    singleton = n == 1
    mean = torch.where(singleton, 0.0, mean)
    std = torch.where(singleton, 1.0, std)
    return ((r - mean) / (std + eps)).to(_float_dtype(rewards))


def drgrpo_advantages(rewards: Tensor, group_index: Tensor, eps: float = 1e-6) -> Tensor:
    """Dr. GRPO advantage (Liu et al. 2025, arXiv:2503.20783): no std normalisation.

        A_i = R_i - mean_g

    verl's ``compute_grpo_outcome_advantage`` with ``norm_adv_by_std_in_grpo
    = False``; a singleton group has baseline 0 (A_i = R_i). ``eps`` is
    unused, accepted for a uniform estimator signature.

    Shapes: ``rewards (N,)``, ``group_index (N,)`` -> ``(N,)``.
    """
    del eps
    r, n, mean, _ = _group_moments(rewards, group_index)
    mean = torch.where(n == 1, 0.0, mean)
    return (r - mean).to(_float_dtype(rewards))


def rloo_advantages(rewards: Tensor, group_index: Tensor, eps: float = 1e-6) -> Tensor:
    """RLOO advantage (Ahmadian et al. 2024, arXiv:2402.14740): leave-one-out baseline.

        A_i = R_i - mean_{j in g, j != i} R_j = (n R_i - sum_g R) / (n - 1)

    as verl's ``compute_rloo_outcome_advantage``; a singleton group has
    baseline 0 (A_i = R_i). ``eps`` is unused (uniform signature).

    Shapes: ``rewards (N,)``, ``group_index (N,)`` -> ``(N,)``.
    """
    del eps
    r, n, mean, _ = _group_moments(rewards, group_index)
    loo = (n * r - n * mean) / (n - 1)
    return torch.where(n == 1, r, loo).to(_float_dtype(rewards))


AdvantageEstimator = Callable[..., Tensor]
"""``(rewards (N,), group_index (N,) long, eps: float = 1e-6) -> advantages (N,)``"""

ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "grpo": grpo_advantages,
    "rloo": rloo_advantages,
    "drgrpo": drgrpo_advantages,
}


def _lookup(registry: dict, name: str, what: str):
    try:
        return registry[name]
    except KeyError:
        valid = ", ".join(repr(k) for k in registry)
        raise ValueError(f"unknown {what} {name!r}; valid names: {valid}") from None


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The advantage estimator registered as ``name`` (``grpo``, ``rloo``, ``drgrpo``)."""
    return _lookup(ADVANTAGE_ESTIMATORS, name, "advantage estimator")


# --------------------------------------------------------------------------- #
# Advantages with a critic (PPO): GAE over the chunks of an episode
# --------------------------------------------------------------------------- #
#
# A "step" of GAE is one policy call, i.e. one action chunk: the critic values the
# observation the chunk was chosen from. Episodes are rows of (N, C) tensors padded
# to the longest episode's C chunks; the (N, C) mask is nonzero on real chunks.


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the elements where ``mask`` is nonzero (0-dim).

    With ``unbiased`` the variance is scaled by n / (n - 1) (Bessel), as verl's
    ``masked_var``; a mask with a single element then gives variance 0 (verl
    raises). Shapes: ``x``, ``mask`` any equal shapes.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = _as_float_mask(mask, x).sum()
        var = torch.where(n > 1, var * n / torch.where(n > 1, n - 1, torch.ones_like(n)), torch.zeros_like(var))
    return var


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` with mean and unbiased variance taken over the mask.

    As verl's ``masked_whiten`` (shift_mean=True); elements off the mask are
    transformed too (and stay meaningless). Shapes: ``x``, ``mask`` ``(N, C)``.
    """
    _check_same_shape(x=x, mask=mask)
    return (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask) + eps)


def terminal_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """Per-chunk rewards of episodes whose outcome reward arrives with their last chunk.

    Args:
        rewards: ``(N,)`` episode rewards (0/1 success in the recipe).
        mask: ``(N, C)`` nonzero on each episode's real chunks; every row needs at
            least one.

    Returns:
        ``(N, C)`` float: ``rewards[i]`` at the last nonzero position of row i, 0 elsewhere.
    """
    if rewards.ndim != 1 or mask.ndim != 2 or mask.shape[0] != rewards.shape[0]:
        raise ValueError(f"rewards must be (N,) and mask (N, C); got {tuple(rewards.shape)} and {tuple(mask.shape)}")
    valid = mask != 0
    if not bool(valid.any(dim=1).all()):
        raise ValueError("every episode needs at least one chunk: a row of the mask is empty")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(valid, positions, -1).amax(dim=1)
    out = torch.zeros(mask.shape, dtype=_float_dtype(rewards), device=rewards.device)
    out[torch.arange(len(rewards), device=rewards.device), last] = rewards.to(out.dtype)
    return out


@dataclass(frozen=True)
class ValueAdvantages:
    """What a critic-based advantage estimator returns.

    Attributes:
        advantages: ``(N, C)`` per-chunk advantages (whitened over the mask when
            asked), the actor's signal; broadcast to each chunk's T elements.
        returns: ``(N, C)`` value targets, ``advantages + values`` before whitening
            (the lambda-return), the critic's signal.
    """

    advantages: Tensor
    returns: Tensor


def gae_advantages(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 0.99,
    lam: float = 0.95,
    whiten: bool = True,
) -> ValueAdvantages:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438, eq. 16).

    Backwards over the chunks c of each row, skipping masked positions (as verl's
    ``compute_gae_advantage_return``):

        delta_c = r_c + gamma * V_next - V_c
        A_c     = delta_c + gamma * lam * A_next
        returns = A + V

    where V_next / A_next are those of the next *real* chunk, and 0 past the last
    one: an episode's end is terminal (success ends it; a step limit ends it with
    reward 0, and the outcome objective has nothing after it either). With
    ``whiten`` the advantages are then normalised over all real chunks of the
    batch (``masked_whiten``), as verl does; ``returns`` never are.

    Args:
        rewards: ``(N, C)`` per-chunk rewards; the recipe's binary outcome sits at the
            last real chunk (``terminal_rewards``).
        values: ``(N, C)`` critic values V(s_c) of the observation each chunk was
            chosen from, under the rollout weights (detached here).
        mask: ``(N, C)`` bool/float, nonzero on real chunks.
        gamma: discount per chunk, in [0, 1].
        lam: GAE's lambda, in [0, 1] (1: Monte-Carlo return minus V, 0: one-step TD).
        whiten: normalise the advantages to mean 0, std 1 over the mask.

    Returns:
        ``ValueAdvantages`` with ``(N, C)`` advantages and returns in at least float32;
        positions off the mask hold 0 advantage before whitening and
        ``returns == values`` there (ignore both).
    """
    _check_same_shape(ndim=2, rewards=rewards, values=values, mask=mask)
    for name, value in (("gamma", gamma), ("lam", lam)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1]; got {value}")
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    r, v = rewards.detach().to(dtype), values.detach().to(dtype)
    check_finite("values", v, mask)
    m = (mask != 0).to(dtype)
    next_value = torch.zeros(r.shape[0], dtype=dtype, device=r.device)
    next_adv = torch.zeros_like(next_value)
    advantages = torch.zeros_like(r)
    for c in range(r.shape[1] - 1, -1, -1):
        delta = r[:, c] + gamma * next_value - v[:, c]
        adv = delta + gamma * lam * next_adv
        # a masked position leaves the running value and advantage untouched (it is skipped)
        next_value = m[:, c] * v[:, c] + (1 - m[:, c]) * next_value
        next_adv = m[:, c] * adv + (1 - m[:, c]) * next_adv
        advantages[:, c] = next_adv
    returns = advantages + v
    if whiten:
        advantages = masked_whiten(advantages, mask)
    return ValueAdvantages(advantages=advantages, returns=returns)


ValueAdvantageEstimator = Callable[..., ValueAdvantages]
"""``(rewards (N,C), values (N,C), mask (N,C), gamma, lam, whiten) -> ValueAdvantages``"""

VALUE_ADVANTAGE_ESTIMATORS: dict[str, ValueAdvantageEstimator] = {
    "gae": gae_advantages,
}
"""Advantage estimators that need a critic's per-chunk values (the policy's ``values`` capability)."""


def needs_values(name: str) -> bool:
    """True when the advantage estimator ``name`` needs a critic (one of ``VALUE_ADVANTAGE_ESTIMATORS``)."""
    return name in VALUE_ADVANTAGE_ESTIMATORS


def get_value_advantage_estimator(name: str) -> ValueAdvantageEstimator:
    """The critic-based advantage estimator registered as ``name`` (``gae``)."""
    return _lookup(VALUE_ADVANTAGE_ESTIMATORS, name, "critic advantage estimator")


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(returns - values) / Var(returns) over the mask (0-dim).

    1: the critic predicts the returns exactly; 0: no better than their mean;
    negative: worse. NaN when the returns do not vary (nothing to explain).
    Shapes: ``values``, ``returns``, ``mask`` equal, e.g. ``(N, C)``.
    """
    _check_same_shape(values=values, returns=returns, mask=mask)
    var_returns = masked_var(returns, mask)
    residual = masked_var(returns - values, mask)
    return torch.where(var_returns > 0, 1 - residual / torch.where(var_returns > 0, var_returns, 1.0),
                       torch.full_like(var_returns, float("nan")))


# --------------------------------------------------------------------------- #
# Policy loss
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class PolicyLossOutput:
    """What a policy loss returns.

    Attributes:
        loss_mat: ``(B, T)`` per-element loss, not aggregated, differentiable;
            exactly 0 where the mask is 0. Aggregate with ``agg_loss`` or
            ``weighted_loss(loss_mat, aggregation_weights(...))``.
        pg_clipfrac: 0-dim, fraction of masked elements where the clipped
            term is the active one (no gradient flows there).
        ppo_kl: 0-dim, masked mean of ``old_log_prob - log_prob`` (after the
            +-20 clamp), an estimate of KL(pi_old || pi).
        pg_clipfrac_lower: 0-dim, fraction of masked elements where the
            dual-clip bound ``clip_ratio_c`` is active (0 when dual clip is off).

    Stats are detached tensors, so collecting them does not sync the device;
    ``metrics()`` converts them to floats under the ``actor/`` namespace.
    """

    loss_mat: Tensor
    pg_clipfrac: Tensor
    ppo_kl: Tensor
    pg_clipfrac_lower: Tensor

    def metrics(self) -> dict[str, float]:
        return {
            "actor/pg_clipfrac": float(self.pg_clipfrac),
            "actor/ppo_kl": float(self.ppo_kl),
            "actor/pg_clipfrac_lower": float(self.pg_clipfrac_lower),
        }


def vanilla_policy_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.28,
    clip_ratio_c: float | None = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate with asymmetric bounds (DAPO "clip-higher"), recipe step 6.

    Per element, with r = exp(log_prob - old_log_prob) (log-ratio clamped to
    [-20, 20] like verl):

        loss = -min(r * A, clip(r, 1 - clip_ratio_low, 1 + clip_ratio_high) * A)

    (PPO eq. 7, arXiv:1707.06347, with eps split into low/high as in DAPO,
    arXiv:2503.14476 eq. 10). With ``clip_ratio_c`` set, elements with A < 0
    are further bounded by dual clip (arXiv:1912.09729 eq. 5):
    loss = min(loss, -clip_ratio_c * A).

    Args:
        log_prob: ``(B, T)`` log-probs of the sampled elements under the
            current weights (differentiable).
        old_log_prob: ``(B, T)`` log-probs under the rollout policy
            (treated as constants: detached here).
        advantages: ``(B, T)`` advantage of each element (the episode's
            advantage broadcast over its elements; detached here).
        mask: ``(B, T)`` bool/float, nonzero for real elements.
        clip_ratio_low: eps_low, ratio floor 1 - eps_low for A < 0. In [0, 1).
        clip_ratio_high: eps_high, ratio ceiling 1 + eps_high for A > 0. >= 0.
        clip_ratio_c: dual-clip bound (> 1), or None for off (the recipe's
            default). Differs from verl: verl always applies it (default 3.0).

    Returns:
        ``PolicyLossOutput``; ``loss_mat`` is ``(B, T)``. Computed in at least
        float32 (bf16 log-probs are upcast: a bf16 ratio is too coarse to clip).
    """
    _check_same_shape(ndim=2, log_prob=log_prob, old_log_prob=old_log_prob, advantages=advantages, mask=mask)
    if not 0.0 <= clip_ratio_low < 1.0:
        raise ValueError(
            f"clip_ratio_low must be in [0, 1) so the ratio floor 1 - clip_ratio_low is positive; got {clip_ratio_low}"
        )
    if clip_ratio_high < 0.0:
        raise ValueError(f"clip_ratio_high must be >= 0; got {clip_ratio_high}")
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:
        raise ValueError(
            f"clip_ratio_c (dual-clip bound) must be > 1, or None to turn dual clip off; got {clip_ratio_c}"
        )

    dtype = torch.promote_types(log_prob.dtype, torch.float32)
    log_prob = log_prob.to(dtype)
    old_log_prob = old_log_prob.detach().to(dtype)
    advantages = advantages.detach().to(dtype)
    valid = mask != 0

    log_ratio = torch.clamp(log_prob - old_log_prob, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    ppo_kl = masked_mean(-log_ratio.detach(), mask)

    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    # -min(rA, clip(r)A) == max(-rA, -clip(r)A); the clipped branch wins exactly
    # when the ratio left the trust region in the direction the advantage pushes.
    loss = torch.maximum(loss_unclipped, loss_clipped)
    pg_clipfrac = masked_mean((loss_clipped > loss_unclipped).to(dtype), mask)

    if clip_ratio_c is None:
        pg_clipfrac_lower = torch.zeros((), dtype=dtype, device=loss.device)
    else:
        loss_dual = -advantages * clip_ratio_c
        negative = advantages < 0
        pg_clipfrac_lower = masked_mean(((loss > loss_dual) & negative).to(dtype), mask)
        loss = torch.where(negative, torch.minimum(loss, loss_dual), loss)

    return PolicyLossOutput(
        loss_mat=torch.where(valid, loss, 0.0),
        pg_clipfrac=pg_clipfrac.detach(),
        ppo_kl=ppo_kl.detach(),
        pg_clipfrac_lower=pg_clipfrac_lower.detach(),
    )


PolicyLoss = Callable[..., PolicyLossOutput]
"""``(log_prob (B,T), old_log_prob (B,T), advantages (B,T), mask (B,T), **clip_params) -> PolicyLossOutput``"""

POLICY_LOSSES: dict[str, PolicyLoss] = {
    "vanilla": vanilla_policy_loss,
}


def get_policy_loss(name: str) -> PolicyLoss:
    """The policy loss registered as ``name`` (``vanilla``)."""
    return _lookup(POLICY_LOSSES, name, "policy loss")


# --------------------------------------------------------------------------- #
# Value loss (the critic of PPO with GAE)
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ValueLossOutput:
    """What a value loss returns.

    Attributes:
        loss_mat: ``(B, C)`` per-element loss, differentiable in the predicted
            values, 0 where the mask is 0. Aggregate like the policy loss
            (``agg_loss`` / ``weighted_loss``).
        vf_clipfrac: 0-dim, fraction of masked elements where the clipped term is
            the larger (active) one.
    """

    loss_mat: Tensor
    vf_clipfrac: Tensor


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    cliprange_value: float = 0.2,
) -> ValueLossOutput:
    """PPO's clipped value loss (as in OpenAI baselines' ppo2 and verl's ``compute_value_loss``):

        v_clip = clip(values, old_values - cliprange_value, old_values + cliprange_value)
        loss   = 0.5 * max((values - returns)^2, (v_clip - returns)^2)

    The new prediction may move at most ``cliprange_value`` from the rollout-time
    value before the loss stops rewarding it, the critic's trust region.
    ``agg_loss(loss_mat, mask, mode)`` equals verl's ``vf_loss`` for that mode.

    Args:
        values: ``(B, C)`` values under the current weights (differentiable).
        old_values: ``(B, C)`` values at rollout time (detached here).
        returns: ``(B, C)`` targets (GAE's lambda-returns; detached here).
        mask: ``(B, C)`` nonzero on real elements.
        cliprange_value: > 0.

    Returns:
        ``ValueLossOutput`` with a ``(B, C)`` ``loss_mat`` in at least float32.
    """
    _check_same_shape(ndim=2, values=values, old_values=old_values, returns=returns, mask=mask)
    if not cliprange_value > 0:
        raise ValueError(f"cliprange_value must be > 0; got {cliprange_value}")
    dtype = torch.promote_types(values.dtype, torch.float32)
    v = values.to(dtype)
    old = old_values.detach().to(dtype)
    target = returns.detach().to(dtype)
    # clamp the prediction itself (not old + clamp(v - old)): inside the range v_clipped is v exactly,
    # so rounding never makes the clipped branch look active
    v_clipped = torch.clamp(v, old - cliprange_value, old + cliprange_value)
    unclipped = (v - target) ** 2
    clipped = (v_clipped - target) ** 2
    loss = 0.5 * torch.maximum(unclipped, clipped)
    return ValueLossOutput(
        loss_mat=torch.where(mask != 0, loss, 0.0),
        vf_clipfrac=masked_mean((clipped > unclipped).to(dtype), mask).detach(),
    )


ValueLoss = Callable[..., ValueLossOutput]
"""``(values (B,C), old_values (B,C), returns (B,C), mask (B,C), cliprange_value) -> ValueLossOutput``"""

VALUE_LOSSES: dict[str, ValueLoss] = {
    "clipped": clipped_value_loss,
}


def get_value_loss(name: str) -> ValueLoss:
    """The value loss registered as ``name`` (``clipped``)."""
    return _lookup(VALUE_LOSSES, name, "value loss")


# --------------------------------------------------------------------------- #
# Loss aggregation
# --------------------------------------------------------------------------- #
#
# Every mode is a weighted sum: agg(loss_mat, mask) = sum_bt w_bt * loss_bt,
# with weights that depend on the mask only. Writing modes as weights is what
# makes gradient accumulation exact: compute w over the whole minibatch once,
# slice it like the micro-batches, and the micro-batch sums
# sum_k (loss_mat_k * w_k).sum() add up to the minibatch loss (and gradient),
# whatever the split. Averaging per-micro-batch means would not.


def _nonempty_rows(m: Tensor) -> Tensor:
    """Number of rows with at least one valid element, (a 0-dim tensor), at least 1."""
    n = (m.sum(dim=-1) > 0).sum().to(m.dtype)
    return torch.where(n > 0, n, torch.ones_like(n))


def _row_counts(m: Tensor) -> Tensor:
    """(B, 1) valid elements per row; 1 for empty rows (whose weights are 0 anyway)."""
    c = m.sum(dim=-1, keepdim=True)
    return torch.where(c > 0, c, torch.ones_like(c))


def _token_mean_weights(m: Tensor, loss_scale_factor: float | None) -> Tensor:
    # sum_bt m*loss / sum_bt m
    total = m.sum()
    return m / torch.where(total > 0, total, torch.ones_like(total))


def _token_sum_weights(m: Tensor, loss_scale_factor: float | None) -> Tensor:
    # sum_bt m*loss
    return m


def _seq_mean_token_mean_weights(m: Tensor, loss_scale_factor: float | None) -> Tensor:
    # (1/B') sum_b [sum_t m*loss / sum_t m], B' = rows with any valid element
    return m / _row_counts(m) / _nonempty_rows(m)


def _seq_mean_token_sum_weights(m: Tensor, loss_scale_factor: float | None) -> Tensor:
    # (1/B') sum_b sum_t m*loss
    return m / _nonempty_rows(m)


def _seq_mean_token_sum_norm_weights(m: Tensor, loss_scale_factor: float | None) -> Tensor:
    # (1/B') sum_b sum_t m*loss / S, S = loss_scale_factor or T (Dr. GRPO's constant normaliser)
    scale = m.shape[-1] if loss_scale_factor is None else loss_scale_factor
    return m / _nonempty_rows(m) / scale


LOSS_AGGREGATIONS: dict[str, Callable[[Tensor, float | None], Tensor]] = {
    "token-mean": _token_mean_weights,
    "token-sum": _token_sum_weights,
    "seq-mean-token-mean": _seq_mean_token_mean_weights,
    "seq-mean-token-sum": _seq_mean_token_sum_weights,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm_weights,
}
"""Aggregation mode name -> weight function ``(float mask (B,T), loss_scale_factor) -> (B,T)``.
Use ``get_loss_aggregation`` / ``aggregation_weights`` rather than calling these."""


def aggregation_weights(mask: Tensor, mode: str, loss_scale_factor: float | None = None) -> Tensor:
    """Per-element weights w with ``(loss_mat * w).sum() == agg_loss(loss_mat, mask, mode)``.

    Modes (as verl's ``agg_loss`` with dp_size 1), B' = rows with at least one
    valid element, m = mask:

    * ``token-mean``: sum(m * loss) / sum(m), every valid element weighs the same.
    * ``token-sum``: sum(m * loss).
    * ``seq-mean-token-mean``: mean over the B' rows of each row's mean over
      its valid elements; every episode row weighs the same. Fully masked rows
      are left out of the row mean (verl does the same).
    * ``seq-mean-token-sum``: mean over the B' rows of each row's sum.
    * ``seq-mean-token-sum-norm``: ``seq-mean-token-sum`` / S with S =
      ``loss_scale_factor``, or T (``mask.shape[-1]``) when None. With
      micro-batching pass a constant S: T changes if micro-batches are
      padded differently.

    Gradient accumulation: compute ``w`` once over the whole minibatch mask,
    split ``w`` the way the minibatch is split into micro-batches, and
    backpropagate ``weighted_loss(loss_mat_k, w_k)`` for each micro-batch k;
    the summed gradients equal those of the minibatch loss exactly.

    Args:
        mask: ``(B, T)`` bool/float.
        mode: one of ``LOSS_AGGREGATIONS``.
        loss_scale_factor: only for ``seq-mean-token-sum-norm``.

    Returns:
        ``(B, T)`` float weights, 0 where the mask is 0. An all-masked batch
        gets all-zero weights (aggregated loss 0; verl's token-mean gives NaN).
    """
    weights_fn = _lookup(LOSS_AGGREGATIONS, mode, "loss aggregation mode")
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (B, T); got shape {tuple(mask.shape)}")
    if loss_scale_factor is not None and not loss_scale_factor > 0:
        raise ValueError(f"loss_scale_factor must be > 0 (or None for T); got {loss_scale_factor}")
    m = mask.to(torch.promote_types(mask.dtype, torch.float32)) if mask.is_floating_point() else mask.float()
    return weights_fn(m, loss_scale_factor)


def weighted_loss(loss_mat: Tensor, weights: Tensor) -> Tensor:
    """``sum(loss_mat * weights)``, ignoring NaN/inf in ``loss_mat`` where the weight is 0.

    Shapes: ``loss_mat (B, T)``, ``weights (B, T)`` -> scalar.
    """
    _check_same_shape(loss_mat=loss_mat, weights=weights)
    return (torch.where(weights != 0, loss_mat, 0.0) * weights.to(loss_mat.dtype)).sum()


def agg_loss(
    loss_mat: Tensor, mask: Tensor, mode: str = "token-mean", loss_scale_factor: float | None = None
) -> Tensor:
    """Aggregate a per-element loss into a scalar (recipe step 6: token mean by default).

    Shapes: ``loss_mat (B, T)``, ``mask (B, T)`` -> scalar. See
    ``aggregation_weights`` for the modes.
    """
    _check_same_shape(ndim=2, loss_mat=loss_mat, mask=mask)
    return weighted_loss(loss_mat, aggregation_weights(mask, mode, loss_scale_factor))


LossAggregation = Callable[..., Tensor]
"""``(loss_mat (B,T), mask (B,T), loss_scale_factor=None) -> scalar``"""


def get_loss_aggregation(name: str) -> LossAggregation:
    """The aggregation ``(loss_mat (B,T), mask (B,T)) -> scalar`` registered as ``name``."""
    _lookup(LOSS_AGGREGATIONS, name, "loss aggregation mode")

    def aggregate(loss_mat: Tensor, mask: Tensor, loss_scale_factor: float | None = None) -> Tensor:
        return agg_loss(loss_mat, mask, name, loss_scale_factor)

    aggregate.__name__ = aggregate.__qualname__ = name.replace("-", "_")
    aggregate.__doc__ = f"``agg_loss(loss_mat, mask, {name!r})``: see ``aggregation_weights``."
    return aggregate


# --------------------------------------------------------------------------- #
# KL penalty (only with a reference model; the recipe has none)
# --------------------------------------------------------------------------- #


def _kl_k1(log_prob: Tensor, ref_log_prob: Tensor) -> Tensor:
    return log_prob - ref_log_prob


def _kl_abs(log_prob: Tensor, ref_log_prob: Tensor) -> Tensor:
    return (log_prob - ref_log_prob).abs()


def _kl_k2(log_prob: Tensor, ref_log_prob: Tensor) -> Tensor:
    return 0.5 * (log_prob - ref_log_prob).square()


def _kl_k3(log_prob: Tensor, ref_log_prob: Tensor) -> Tensor:
    # Schulman's k3 = r - log r - 1 with r = pi_ref / pi (http://joschu.net/blog/kl-approx.html);
    # clamps as verl: log r to [-20, 20] against overflow, the estimate to [-10, 10].
    log_r = torch.clamp(ref_log_prob - log_prob, -20.0, 20.0)
    return torch.clamp(torch.exp(log_r) - log_r - 1.0, -10.0, 10.0)


KL_PENALTIES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "kl": _kl_k1,
    "k1": _kl_k1,
    "abs": _kl_abs,
    "mse": _kl_k2,
    "k2": _kl_k2,
    "low_var_kl": _kl_k3,
    "k3": _kl_k3,
}


def kl_penalty(log_prob: Tensor, ref_log_prob: Tensor, kind: str = "low_var_kl") -> Tensor:
    """Per-element estimate of KL(pi || pi_ref) from sampled log-probs, as verl's ``kl_penalty``.

    Kinds: ``kl``/``k1`` log p - log p_ref; ``abs`` its absolute value;
    ``mse``/``k2`` half its square; ``low_var_kl``/``k3`` (clamped to
    [-10, 10]). verl's straight-through ``"k3+"`` variants are not provided.

    Shapes: ``log_prob (B, T)``, ``ref_log_prob (B, T)`` -> ``(B, T)``
    (any equal shapes work).
    """
    fn = _lookup(KL_PENALTIES, kind, "KL penalty kind")
    _check_same_shape(log_prob=log_prob, ref_log_prob=ref_log_prob)
    return fn(log_prob, ref_log_prob)
