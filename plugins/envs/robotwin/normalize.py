"""Min/max action normalisation as OpenVLA-OFT's ALOHA / RoboTwin checkpoints use it (numpy only,
so the RoboTwin venv needs no torch for it).

OFT trains ALOHA policies on actions scaled to [-1, 1] with each dimension's dataset min and max
(``NormalizationType.BOUNDS``) and un-normalises its outputs with
``0.5 * (a + 1) * (max - min + 1e-8) + min``; SimpleVLA-RL's RoboTwin runs do the same. With
``env.action_normalization=minmax`` the env accepts such [-1, 1] actions and applies that map with
the bounds of ``env.action_stats`` (an OFT ``dataset_statistics.json``) or, without one, the
robot's joint limits (gripper 0..1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pushcut.errors import EnvError

OFT_EPS = 1e-8
"""OpenVLA-OFT adds this to the range when un-normalising."""


@dataclass(frozen=True)
class ActionBoundsMinMax:
    """Per-dimension (D,) bounds: -1 maps to ``low``, +1 to ``high``."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high):
            raise ValueError(f"min/max bounds need as many lows as highs, got {len(self.low)} and {len(self.high)}")
        bad = [i for i, (lo, hi) in enumerate(zip(self.low, self.high)) if lo > hi]
        if bad:
            raise ValueError(f"min/max bounds have min > max in dims {bad}")

    def unnormalize(self, actions: np.ndarray) -> np.ndarray:
        """(..., D) actions in [-1, 1] → env units (clipped to [-1, 1] first)."""
        lo, hi = np.asarray(self.low), np.asarray(self.high)
        a = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
        return 0.5 * (a + 1.0) * (hi - lo + OFT_EPS) + lo

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Env units (..., D) → [-1, 1], the inverse (what OFT's data pipeline applies)."""
        lo, hi = np.asarray(self.low), np.asarray(self.high)
        a = np.asarray(actions, dtype=np.float64)
        out = np.clip(2.0 * (a - lo) / (hi - lo + OFT_EPS) - 1.0, -1.0, 1.0)
        return np.where(lo == hi, 0.0, out)


def load_action_stats(path: str, key: str = "") -> ActionBoundsMinMax:
    """The action min/max of entry ``key`` (or the only entry) of an OFT ``dataset_statistics.json``
    (``{key: {"action": {"min": [...], "max": [...], ...}, "proprio": {...}}}``)."""
    try:
        stats = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise EnvError(f"env.action_stats: cannot read {path} ({exc}); give an OFT dataset_statistics.json") from None
    if not isinstance(stats, dict) or not stats:
        raise EnvError(f"env.action_stats: {path} holds no dataset entries")
    if not key:
        if len(stats) != 1:
            raise EnvError(f"env.action_stats: {path} has {len(stats)} entries; choose one with "
                           f"env.action_stats_key: {', '.join(sorted(stats))}")
        key = next(iter(stats))
    if key not in stats:
        raise EnvError(f"env.action_stats_key={key!r} is not in {path}; it has: {', '.join(sorted(stats))}")
    try:
        action = stats[key]["action"]
        return ActionBoundsMinMax(tuple(float(v) for v in action["min"]), tuple(float(v) for v in action["max"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise EnvError(f"env.action_stats: entry {key!r} of {path} has no usable action min/max ({exc})") from None
