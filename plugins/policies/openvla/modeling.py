"""The OpenVLA network in transformers-5 parts (no timm, no torchvision, no remote code).

* Vision: one or two towers (DINOv2-with-registers and SigLIP, transformers' own modules), both with
  timm's exact erf GELU (OpenVLA builds them with timm and overrides no activation; transformers'
  own SigLIP default, the tanh approximation, would move features by ~1e-3). Each
  tower's features are the patch tokens output by its **second-to-last** block, without the final
  norm (timm ``get_intermediate_layers(n={blocks - 2})``); the last block is never run. Fused
  towers are concatenated along the feature dimension (DINOv2 first), several images along tokens.
* Projector: fused backbone ``fc1 → GELU → fc2 → GELU → fc3`` (vision_dim → 4·vision_dim → llm → llm);
  single backbone ``fc1 → GELU → fc2``.
* Optional proprio projector (OpenVLA-OFT): ``fc1 → GELU → fc2``, one token after the patches.
* Language model: transformers' ``LlamaForCausalLM`` built from the checkpoint's ``text_config``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    LlamaConfig,
    LlamaForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from pushcut.plugins.policies.openvla.checkpoint import TowerSpec


def build_tower(spec: TowerSpec) -> nn.Module:
    """An untrained transformers module for one timm tower (weights come from the checkpoint)."""
    if spec.kind == "dinov2":
        if spec.intermediate_size % spec.hidden_size:
            raise ValueError(f"DINOv2 MLP width {spec.intermediate_size} is not a multiple of {spec.hidden_size}")
        config = Dinov2WithRegistersConfig(
            hidden_size=spec.hidden_size, num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
            mlp_ratio=spec.intermediate_size // spec.hidden_size, image_size=spec.image_size,
            patch_size=spec.patch_size, num_register_tokens=spec.registers, layerscale_value=1.0,
            layer_norm_eps=1e-6, hidden_act=spec.act, qkv_bias=True, drop_path_rate=0.0,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )
        config._attn_implementation = "sdpa"
        return Dinov2WithRegistersModel(config)
    config = SiglipVisionConfig(
        hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, image_size=spec.image_size, patch_size=spec.patch_size,
        layer_norm_eps=1e-6, hidden_act=spec.act, attention_dropout=0.0, vision_use_head=False,
    )
    config._attn_implementation = "sdpa"
    return SiglipVisionModel(config)


class VisionTower(nn.Module):
    """A transformers ViT used the way OpenVLA uses its timm tower."""

    def __init__(self, spec: TowerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.model = build_tower(spec)

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.encoder.layer if self.spec.kind == "dinov2" else self.model.encoder.layers

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) → (B, num_patches, hidden): patch tokens after the second-to-last block."""
        hidden = self.model.embeddings(pixel_values)
        for layer in self.layers[: self.spec.layers - 1]:
            hidden = layer(hidden, None)
        return hidden[:, self.spec.prefix_tokens:]


class Projector(nn.Module):
    """Prismatic's (fused) GELU MLP from vision features to the LLM width."""

    def __init__(self, vision_dim: int, llm_dim: int, fused: bool) -> None:
        super().__init__()
        mid = 4 * vision_dim if fused else llm_dim
        self.fc1 = nn.Linear(vision_dim, mid)
        self.fc2 = nn.Linear(mid, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim) if fused else None
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act(self.fc1(x)))
        return self.fc3(self.act(x)) if self.fc3 is not None else x


class ProprioProjector(nn.Module):
    """OpenVLA-OFT's proprio projector: normalised state (B, D) → one LLM token (B, llm_dim)."""

    def __init__(self, proprio_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PrismaticVLA(nn.Module):
    """Vision towers + projector (+ proprio projector) + Llama, with the original module names
    (``vision_backbone``, ``projector``, ``proprio_projector``, ``language_model``)."""

    def __init__(self, specs: list[TowerSpec], llm_config: LlamaConfig, proprio_dim: int = 0) -> None:
        super().__init__()
        self.vision_backbone = nn.ModuleList([VisionTower(s) for s in specs])
        vision_dim = sum(s.hidden_size for s in specs)
        self.projector = Projector(vision_dim, llm_config.hidden_size, fused=len(specs) > 1)
        self.proprio_projector = ProprioProjector(proprio_dim, llm_config.hidden_size) if proprio_dim else None
        self.language_model = LlamaForCausalLM(llm_config)
        if len({s.num_patches for s in specs}) > 1:
            raise ValueError(f"fused towers must give the same number of patches, got {[s.num_patches for s in specs]}")

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3·towers·images, S, S) → projected patch tokens (B, images·patches, llm_dim)."""
        towers = len(self.vision_backbone)
        per_image = torch.split(pixel_values, 3 * towers, dim=1)
        # All images of the batch through each tower in one call.
        stacked = torch.cat(per_image, dim=0)
        features = torch.cat(
            [tower(chunk) for tower, chunk in zip(self.vision_backbone, torch.split(stacked, 3, dim=1))], dim=2
        )
        b = pixel_values.shape[0]
        features = torch.cat(torch.split(features, b, dim=0), dim=1)
        return self.projector(features)
