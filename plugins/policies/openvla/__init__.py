"""The ``openvla`` policy: OpenVLA / OpenVLA-OFT loaded from the original Hugging Face checkpoints.

Built from transformers parts (DINOv2 + SigLIP towers, Llama-2), loading and saving the original
"prismatic" safetensors layout; decodes discrete action tokens in one parallel pass (OpenVLA-OFT /
SimpleVLA-RL) or autoregressively (OpenVLA). Needs the ``openvla`` extra (sentencepiece for the
checkpoints' tokenizer, peft for LoRA); without it the plugin is listed as unavailable.
"""

from __future__ import annotations

import peft  # noqa: F401  (a missing optional dependency must show up at import: the plugin is then "unavailable")
import sentencepiece  # noqa: F401

from pushcut import hookimpl
from pushcut.plugins.policies.openvla.config import OpenVLAConfig
from pushcut.plugins.policies.openvla.policy import OpenVLAPolicy

__all__ = ["OpenVLAConfig", "OpenVLAPolicy"]


@hookimpl
def pushcut_register_policies(registry) -> None:
    registry.add("openvla", OpenVLAConfig, OpenVLAPolicy)
