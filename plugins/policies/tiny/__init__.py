"""The ``tiny`` policy: a small VLA built from transformers parts, OpenVLA-style action bins.

The default policy of pushcut: trains on CPU, needs no downloads (random init
from configs), and exercises the same token-level (B, T) log-prob contract as
OpenVLA-OFT.
"""

from __future__ import annotations

from pushcut import hookimpl
from pushcut.plugins.policies.tiny.config import TinyTokenVLAConfig
from pushcut.plugins.policies.tiny.policy import TinyTokenVLA

__all__ = ["TinyTokenVLA", "TinyTokenVLAConfig"]


@hookimpl
def pushcut_register_policies(registry) -> None:
    registry.add("tiny", TinyTokenVLAConfig, TinyTokenVLA)
