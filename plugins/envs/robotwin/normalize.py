"""Min/max action normalisation as OpenVLA-OFT's ALOHA / RoboTwin checkpoints use it: the bounds
and the clip around :mod:`pushcut.actions`' own un-normalisation (numpy in, no torch imported, so
the RoboTwin venv needs none).

OFT trains ALOHA policies on actions scaled to [-1, 1] with each dimension's dataset min and max
(``NormalizationType.BOUNDS``) and un-normalises its outputs with
``0.5 * (a + 1) * (max - min + 1e-8) + min``; SimpleVLA-RL's RoboTwin runs do the same. With
``env.action_normalization=minmax`` the env accepts such [-1, 1] actions and applies that map with
the bounds of ``env.action_stats`` (an OFT ``dataset_statistics.json``) or, without one, the
robot's joint limits (gripper 0..1).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pushcut.actions import ActionBounds
from pushcut.errors import EnvError

OFT_EPS = 1e-8
"""OpenVLA-OFT adds this to the range when un-normalising."""


def minmax_bounds(low, high) -> ActionBounds:
    """Per-dimension (D,) bounds, every dimension normalised: -1 maps to ``low``, +1 to ``high``."""
    return ActionBounds(tuple(float(v) for v in low), tuple(float(v) for v in high), (True,) * len(low))


def unnormalize_minmax(bounds: ActionBounds, actions: np.ndarray) -> np.ndarray:
    """(..., D) actions in [-1, 1] → env units (clipped to [-1, 1] first), with OFT's eps
    (:func:`pushcut.actions.unnormalize_actions`)."""
    return bounds.unnormalize(np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0), eps=OFT_EPS)


def load_action_stats(path: str, key: str = "") -> ActionBounds:
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
        return minmax_bounds(action["min"], action["max"])
    except (KeyError, TypeError, ValueError) as exc:
        raise EnvError(f"env.action_stats: entry {key!r} of {path} has no usable action min/max ({exc})") from None
