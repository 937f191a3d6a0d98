"""Action discretisation and normalisation shared by the token VLAs (tiny, OpenVLA).

Four spaces a token policy moves between, and the functions between them:

* env units ⇄ normalised [-1, 1]: :func:`normalize_actions` / :func:`unnormalize_actions`
  (or :class:`ActionBounds` built from a checkpoint's dataset statistics);
* normalised ⇄ bin index 0..n_bins-1: :meth:`ActionTokenizer.discretize` /
  :meth:`ActionTokenizer.bins_to_actions` (bin centres);
* bin index ⇄ LLM token id: :meth:`ActionTokenizer.bins_to_token_ids` /
  :meth:`ActionTokenizer.token_ids_to_bins`;
* normalised ⇄ token id directly: :meth:`ActionTokenizer.encode` / :meth:`ActionTokenizer.decode`.

:class:`ActionTokenizer` reproduces OpenVLA's ``prismatic/vla/action_tokenizer.py``
bit for bit: ``n_bins`` edges ``np.linspace(-1, 1, n_bins)``, ``np.digitize``
(which returns 1..n_bins for inputs clipped to [-1, 1]), token id
``vocab_size - digitized`` (so the action tokens are the *last* ``n_bins`` ids of
the base vocabulary, 31744..31999 for Llama-2's 32000), and decoding to the
``n_bins - 1`` bin centres with the top index clipped onto the last centre.
Here a *bin index* is ``digitized - 1`` (0..n_bins-1, increasing with the action
value); token ids decrease as the action increases, exactly as in OpenVLA.

Every function accepts numpy arrays or torch tensors of any shape and returns
the same kind, so the same code serves rollouts (numpy) and training (torch).
torch is imported only when a tensor comes in: an env's worker (another venv,
no torch) uses the same normalisation on numpy arrays.

:func:`sample_categorical` and :func:`categorical_entropy` are the one sampler and
the one entropy of every token policy (bins or LLM action tokens).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

Array = TypeVar("Array", np.ndarray, "torch.Tensor")


def _is_tensor(x: object) -> bool:
    """True for a torch tensor (never imports torch: without it loaded, nothing is a tensor)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _torch() -> Any:
    import torch

    return torch


class ActionTokenizer:
    """Uniform binning of normalised actions in [min_action, max_action], as OpenVLA does it.

    Attributes (numpy, float64, as in OpenVLA):
        ``bins``: (n_bins,) bin *edges* ``linspace(min_action, max_action, n_bins)``.
        ``bin_centers``: (n_bins - 1,) midpoints between consecutive edges; what bins decode to.
    """

    def __init__(
        self,
        vocab_size: int,
        n_bins: int = 256,
        min_action: float = -1.0,
        max_action: float = 1.0,
    ) -> None:
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2 (edges of at least one interval), got {n_bins}")
        if vocab_size < n_bins:
            raise ValueError(
                f"vocab_size ({vocab_size}) must be >= n_bins ({n_bins}): action ids are its last n_bins ids"
            )
        if not min_action < max_action:
            raise ValueError(f"min_action ({min_action}) must be < max_action ({max_action})")
        self.vocab_size = int(vocab_size)
        self.n_bins = int(n_bins)
        self.min_action = float(min_action)
        self.max_action = float(max_action)
        self.bins = np.linspace(self.min_action, self.max_action, self.n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0
        # OpenVLA's own name for the id *just below* the action range (its masks use `ids > begin_idx`).
        self.action_token_begin_idx = self.vocab_size - (self.n_bins + 1)

    # Torch copies in float64 so torch results equal numpy's to the last bit (made on first torch use).

    @property
    def _edges_t(self) -> torch.Tensor:
        return _torch().from_numpy(self.bins)

    @property
    def _centers_t(self) -> torch.Tensor:
        return _torch().from_numpy(self.bin_centers)

    # ------------------------------------------------------------------ ranges

    @property
    def first_token_id(self) -> int:
        """Smallest action token id (``vocab_size - n_bins``; it encodes the top bin)."""
        return self.vocab_size - self.n_bins

    @property
    def last_token_id(self) -> int:
        """Largest action token id (``vocab_size - 1``; it encodes bin 0, the most negative actions)."""
        return self.vocab_size - 1

    @property
    def bin_width(self) -> float:
        """Distance between consecutive edges, ``(max - min) / (n_bins - 1)``."""
        return (self.max_action - self.min_action) / (self.n_bins - 1)

    def is_action_token(self, token_ids: Array) -> Array:
        """Bool mask, same shape as ``token_ids``: True for ids in ``[first_token_id, last_token_id]``."""
        return (token_ids >= self.first_token_id) & (token_ids <= self.last_token_id)

    # ------------------------------------------------------------------ continuous <-> bins

    def discretize(self, actions: Array) -> Array:
        """Normalised actions, any shape (...), → bin indices (...) int64 in 0..n_bins-1.

        Values are clipped to [min_action, max_action] first. A value ``x`` with
        ``bins[i] <= x < bins[i+1]`` gets bin ``i``; exactly ``max_action`` gets
        bin ``n_bins - 1`` (``np.digitize`` semantics). NaN is rejected, because
        ``np.digitize`` would silently put it in the top bin.
        """
        if _is_tensor(actions):
            torch = _torch()
            x = actions.detach().to(torch.float64)
            if torch.isnan(x).any():
                raise ValueError("cannot discretize NaN actions")
            x = x.clamp(self.min_action, self.max_action)
            # bucketize(right=True) finds i with edges[i-1] <= x < edges[i]: np.digitize's default.
            digitized = torch.bucketize(x, self._edges_t.to(x.device), right=True)
            return digitized - 1
        x = np.asarray(actions, dtype=np.float64)
        if np.isnan(x).any():
            raise ValueError("cannot discretize NaN actions")
        x = np.clip(x, self.min_action, self.max_action)
        return np.digitize(x, self.bins).astype(np.int64) - 1

    def bins_to_actions(self, bins: Array, dtype: torch.dtype | np.dtype | None = None) -> Array:
        """Bin indices (...) → normalised actions (...) at the bin centres.

        The top index ``n_bins - 1`` (only reached by exactly ``max_action``)
        decodes to the last centre, as OpenVLA's clip does. Numpy returns
        float64 (OpenVLA's values exactly) unless ``dtype`` is given; torch
        returns ``torch.get_default_dtype()`` unless ``dtype`` is given.
        """
        if _is_tensor(bins):
            idx = bins.long().clamp(0, self.n_bins - 2)
            out = self._centers_t.to(bins.device)[idx]
            return out.to(dtype or _torch().get_default_dtype())
        idx = np.clip(np.asarray(bins, dtype=np.int64), 0, self.n_bins - 2)
        out = self.bin_centers[idx]
        return out if dtype is None else out.astype(dtype)

    # ------------------------------------------------------------------ bins <-> token ids

    def bins_to_token_ids(self, bins: Array) -> Array:
        """Bin indices (...) → token ids (...): ``vocab_size - 1 - bin`` (OpenVLA's ``vocab_size - digitized``)."""
        if _is_tensor(bins):
            return (self.vocab_size - 1) - bins.long()
        return (self.vocab_size - 1) - np.asarray(bins, dtype=np.int64)

    def token_ids_to_bins(self, token_ids: Array) -> Array:
        """Token ids (...) → bin indices (...). Ids outside the action range are clipped into it,
        as OpenVLA's decode does (a model that emits a non-action id still yields an action)."""
        if _is_tensor(token_ids):
            return ((self.vocab_size - 1) - token_ids.long()).clamp(0, self.n_bins - 1)
        return np.clip((self.vocab_size - 1) - np.asarray(token_ids, dtype=np.int64), 0, self.n_bins - 1)

    # ------------------------------------------------------------------ continuous <-> token ids

    def encode(self, actions: Array) -> Array:
        """Normalised actions (...) → token ids (...), as OpenVLA's ``__call__`` computes them
        (before it turns them into strings)."""
        return self.bins_to_token_ids(self.discretize(actions))

    def decode(self, token_ids: Array, dtype: torch.dtype | np.dtype | None = None) -> Array:
        """Token ids (...) → normalised actions (...): OpenVLA's ``decode_token_ids_to_actions``."""
        return self.bins_to_actions(self.token_ids_to_bins(token_ids), dtype=dtype)


# --------------------------------------------------------------------------- normalisation


def _bounds_like(
    x: Array,
    low: Sequence[float] | np.ndarray,
    high: Sequence[float] | np.ndarray,
    mask: Sequence[bool] | np.ndarray | None,
) -> tuple[Any, Any, Any]:
    """``low``, ``high``, ``mask`` as arrays of x's kind, broadcastable against (..., D)."""
    low_a = np.asarray(low, dtype=np.float64)
    high_a = np.asarray(high, dtype=np.float64)
    dim = x.shape[-1]
    mask_a = np.ones(dim, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    for name, value in (("low", low_a), ("high", high_a), ("mask", mask_a)):
        if value.shape != (dim,):
            raise ValueError(f"action {name} must have shape ({dim},) to match actions (..., {dim}), got {value.shape}")
    if _is_tensor(x):
        torch = _torch()
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        return (torch.as_tensor(low_a, dtype=dtype, device=x.device),
                torch.as_tensor(high_a, dtype=dtype, device=x.device),
                torch.as_tensor(mask_a, device=x.device))
    return low_a, high_a, mask_a


def unnormalize_actions(
    normalized: Array,
    low: Sequence[float] | np.ndarray,
    high: Sequence[float] | np.ndarray,
    mask: Sequence[bool] | np.ndarray | None = None,
    eps: float = 0.0,
) -> Array:
    """Normalised actions (..., D) in [-1, 1] → env units (..., D).

    ``0.5 * (x + 1) * (high - low + eps) + low`` where ``mask`` is True; dims with
    mask False pass through unchanged (OpenVLA keeps the LIBERO gripper that
    way). ``low``/``high`` are the q01/q99 action quantiles for OpenVLA's
    BOUNDS_Q99 checkpoints (LIBERO, Bridge) or min/max for BOUNDS (ALOHA,
    RoboTwin), each of shape (D,). Inputs are not clipped: values from
    :meth:`ActionTokenizer.bins_to_actions` are already inside [-1, 1].
    ``eps`` is 0 in OpenVLA; OpenVLA-OFT (and SimpleVLA-RL) add ``eps=1e-8`` to the range.
    Numpy input gives float64 (as OpenVLA); torch keeps a floating input's dtype.
    """
    lo, hi, m = _bounds_like(normalized, low, high, mask)
    if _is_tensor(normalized):
        torch = _torch()
        x = normalized if normalized.is_floating_point() else normalized.to(lo.dtype)
        return torch.where(m, 0.5 * (x + 1.0) * (hi - lo + eps) + lo, x)
    x = np.asarray(normalized, dtype=np.float64)
    return np.where(m, 0.5 * (x + 1.0) * (hi - lo + eps) + lo, x)


def normalize_actions(
    actions: Array,
    low: Sequence[float] | np.ndarray,
    high: Sequence[float] | np.ndarray,
    mask: Sequence[bool] | np.ndarray | None = None,
) -> Array:
    """Env-unit actions (..., D) → normalised (..., D), the inverse of :func:`unnormalize_actions`.

    OpenVLA's dataset transform: ``clip(2 * (x - low) / (high - low + 1e-8) - 1, -1, 1)``
    where ``mask`` is True, the raw value where it is False, and 0 in dims
    with ``low == high`` (unused dims, the "Moo Jin" rule in
    ``prismatic/vla/datasets/rlds/utils/data_utils.py``). The 1e-8 keeps
    zero-width dims finite.
    """
    lo, hi, m = _bounds_like(actions, low, high, mask)
    if _is_tensor(actions):
        torch = _torch()
        x = actions if actions.is_floating_point() else actions.to(lo.dtype)
        scaled = torch.clamp(2.0 * (x - lo) / (hi - lo + 1e-8) - 1.0, -1.0, 1.0)
        out = torch.where(m, scaled, x)
        return torch.where(lo == hi, torch.zeros_like(out), out)
    x = np.asarray(actions, dtype=np.float64)
    out = np.where(m, np.clip(2.0 * (x - lo) / (hi - lo + 1e-8) - 1.0, -1.0, 1.0), x)
    return np.where(lo == hi, 0.0, out)


@dataclass(frozen=True)
class ActionBounds:
    """Per-dimension normalisation bounds of one checkpoint's action space.

    ``low``/``high``: (D,) values mapped to -1 / +1. ``mask``: (D,) bool, False
    for dims left unnormalised (e.g. a gripper already in [-1, 1]).
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    mask: tuple[bool, ...]

    def __post_init__(self) -> None:
        if not len(self.low) == len(self.high) == len(self.mask):
            raise ValueError(
                f"ActionBounds: low, high and mask need one entry per action dim, "
                f"got {len(self.low)}, {len(self.high)} and {len(self.mask)}"
            )
        bad = [i for i, (lo, hi) in enumerate(zip(self.low, self.high)) if lo > hi]
        if bad:
            raise ValueError(f"ActionBounds: low > high in dims {bad}")

    @property
    def action_dim(self) -> int:
        return len(self.low)

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any], kind: str = "q99") -> ActionBounds:
        """Bounds from an OpenVLA ``dataset_statistics.json`` ``action`` entry.

        ``kind="q99"`` (BOUNDS_Q99: LIBERO, Bridge) reads ``q01``/``q99``;
        ``kind="minmax"`` (BOUNDS: ALOHA, RoboTwin) reads ``min``/``max``.
        ``mask`` defaults to all True when the entry has none.
        """
        keys = {"q99": ("q01", "q99"), "minmax": ("min", "max")}
        if kind not in keys:
            raise ValueError(f"unknown normalisation kind {kind!r}; use 'q99' or 'minmax'")
        lo_key, hi_key = keys[kind]
        missing = [k for k in (lo_key, hi_key) if k not in stats]
        if missing:
            raise ValueError(f"action statistics lack {missing} needed for kind={kind!r}; found keys {sorted(stats)}")
        low = tuple(float(v) for v in stats[lo_key])
        high = tuple(float(v) for v in stats[hi_key])
        mask = tuple(bool(v) for v in stats.get("mask", [True] * len(low)))
        return cls(low=low, high=high, mask=mask)

    def normalize(self, actions: Array) -> Array:
        """Env units (..., D) → [-1, 1] (..., D); see :func:`normalize_actions`."""
        return normalize_actions(actions, self.low, self.high, self.mask)

    def unnormalize(self, normalized: Array, eps: float = 0.0) -> Array:
        """[-1, 1] (..., D) → env units (..., D); see :func:`unnormalize_actions`."""
        return unnormalize_actions(normalized, self.low, self.high, self.mask, eps=eps)


# --------------------------------------------------------------------------- sampling


def sample_categorical(probs: torch.Tensor) -> torch.Tensor:
    """One draw per row of ``probs`` (..., K) → indices (...) int64, by inverting the CDF.

    The one categorical sampler of the token policies. ~20× faster on CPU than
    ``torch.multinomial`` (which draws K exponentials per row); bins of probability 0
    are never drawn (``right=True`` skips flat CDF steps). Rows need not sum to 1.
    """
    torch = _torch()
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(*probs.shape[:-1], 1, device=probs.device, dtype=cdf.dtype) * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def categorical_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy (...) of the categoricals whose normalised log-probs are ``log_probs`` (..., K)."""
    return -(log_probs.exp() * log_probs).sum(dim=-1)
