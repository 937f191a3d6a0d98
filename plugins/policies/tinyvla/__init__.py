"""The ``tinyvla`` policy: TinyVLA (a GPTNeoX VLM + a diffusion head) with incremental task adapters.

Built from transformers parts (CLIP or SigLIP vision tower, GPTNeoX / Pythia LLM) with random
init; a DDIM diffusion head scored step by step for GRPO; one peft LoRA adapter (and head) per
task. Needs the ``tinyvla`` extra (peft); without it the plugin is listed as unavailable.
"""

from __future__ import annotations

import peft  # noqa: F401  (a missing optional dependency must show up at import: the plugin is then "unavailable")

from pushcut import hookimpl
from pushcut.plugins.policies.tinyvla.config import AdaptersConfig, TinyVLAConfig
from pushcut.plugins.policies.tinyvla.policy import TinyVLAPolicy

__all__ = ["AdaptersConfig", "TinyVLAConfig", "TinyVLAPolicy"]


@hookimpl
def pushcut_register_policies(registry) -> None:
    registry.add("tinyvla", TinyVLAConfig, TinyVLAPolicy)
