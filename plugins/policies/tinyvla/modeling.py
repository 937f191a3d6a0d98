"""The parts of TinyVLA: transformers backbones built from configs, the noise schedule, the denoisers.

* :func:`build_vision` — CLIPVisionModel or SiglipVisionModel (patch tokens, no pooling head);
* :func:`build_llm` — GPTNeoXModel with a Pythia-style config over a byte vocabulary;
* :class:`NoiseSchedule` — DDPM betas, ᾱ_t, and the DDIM step arithmetic;
* :class:`ConditionalMLP` / :class:`ConditionalUnet1D` — ε-prediction networks over an action
  chunk (B, chunk, action_dim), FiLM-conditioned on (pooled VLM state ⊕ proprio) and the timestep.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    GPTNeoXConfig,
    GPTNeoXModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from pushcut.plugins.policies.tinyvla.config import TinyVLAConfig
from pushcut.plugins.policies.tinyvla.processing import PAD_ID, VOCAB_SIZE


# --------------------------------------------------------------------------- backbones


def build_vision(c: TinyVLAConfig) -> nn.Module:
    """The vision tower, randomly initialised from its transformers config."""
    common = dict(hidden_size=c.vision_hidden_size, intermediate_size=c.vision_intermediate_size,
                  num_hidden_layers=c.vision_layers, num_attention_heads=c.vision_heads, image_size=c.image_size,
                  patch_size=c.patch_size, attention_dropout=0.0)
    if c.vision_tower == "clip":
        config = CLIPVisionConfig(**common)
        config._attn_implementation = "sdpa"
        return CLIPVisionModel(config)
    config = SiglipVisionConfig(**common, vision_use_head=False)
    config._attn_implementation = "sdpa"
    return SiglipVisionModel(config)


def vision_tokens(vision: nn.Module, pixel_values: torch.Tensor, tower: str) -> torch.Tensor:
    """Patch features (B, num_patches, vision_hidden) — CLIP's class token dropped, as LLaVA does."""
    hidden = vision(pixel_values=pixel_values).last_hidden_state
    return hidden[:, 1:] if tower == "clip" else hidden


def llm_config(c: TinyVLAConfig) -> GPTNeoXConfig:
    """A Pythia-style GPTNeoX config (parallel residual, partial rotary) over the byte vocabulary."""
    text = c.max_instruction_tokens
    config = GPTNeoXConfig(
        vocab_size=VOCAB_SIZE, hidden_size=c.hidden_size, num_hidden_layers=c.layers,
        num_attention_heads=c.heads, intermediate_size=c.intermediate_size, rotary_pct=c.rotary_pct,
        max_position_embeddings=c.num_patches + text, use_parallel_residual=True, hidden_act="gelu",
        attention_dropout=0.0, hidden_dropout=0.0, pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2,
        use_cache=False, tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    return config


def build_llm(c: TinyVLAConfig) -> GPTNeoXModel:
    return GPTNeoXModel(llm_config(c))


# --------------------------------------------------------------------------- noise schedule


class NoiseSchedule(nn.Module):
    """ᾱ_t of a DDPM schedule and the timesteps of a DDIM sampler over it.

    DDIM step from t to its predecessor p (ᾱ_p = 1 after the last step), for a predicted noise ε̂::

        x̂₀ = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t                    (clipped to [-1, 1] if clip_sample)
        σ_t = η √((1−ᾱ_p)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_p)          (Song et al. 2021, eq. 16)
        x_p = √ᾱ_p x̂₀ + √(1−ᾱ_p−s²) ε̂ + s z,   z ~ N(0, I)

    with the step's std ``s`` chosen by the policy (see ``TinyVLAPolicy``)."""

    def __init__(self, c: TinyVLAConfig) -> None:
        super().__init__()
        n = c.train_timesteps
        if c.beta_schedule == "linear":
            betas = torch.linspace(1e-4, 2e-2, n, dtype=torch.float64)
        else:  # squaredcos_cap_v2 (Nichol & Dhariwal 2021)
            def alpha_bar(t: float) -> float:
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
                                 dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        ratio = n // c.inference_steps
        steps = torch.arange(c.inference_steps - 1, -1, -1, dtype=torch.long) * ratio  # "leading" spacing
        prev = torch.where(steps - ratio >= 0, alphas_cumprod[(steps - ratio).clamp(min=0)], torch.ones(()))
        # Not saved: all of it is a function of the config.
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.register_buffer("timesteps", steps, persistent=False)
        self.register_buffer("alpha_t", alphas_cumprod[steps].float(), persistent=False)
        self.register_buffer("alpha_prev", prev.float(), persistent=False)
        sigma = c.eta * torch.sqrt((1 - prev) / (1 - alphas_cumprod[steps])) * torch.sqrt(1 - alphas_cumprod[steps] / prev)
        self.register_buffer("ddim_sigma", sigma.float(), persistent=False)


# --------------------------------------------------------------------------- denoisers


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (N, dim) of integer timesteps (N,)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    angles = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(emb, (0, dim - emb.shape[-1]))


class TimestepEncoder(nn.Module):
    """Sinusoidal embedding → Linear → Mish → Linear (Diffusion Policy's diffusion-step encoder)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(timestep_embedding(t, self.dim))


class FiLMBlock(nn.Module):
    """h + Linear(Mish(scale(c) · LayerNorm(Linear(h)) + bias(c))): one residual MLP block with FiLM."""

    def __init__(self, width: int, cond_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * width))
        self.out = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = self.film(cond).chunk(2, dim=-1)
        return h + self.out(F.mish(self.norm(self.linear(h)) * (1 + scale) + bias))


class ConditionalMLP(nn.Module):
    """ε̂(x_t, t, c) for a flattened chunk: the small CPU-default denoiser.

    A chunk of 4 × 4 actions is too short for a U-Net's down-sampling to buy anything; a
    residual MLP with the same FiLM conditioning per block costs a fraction of it."""

    def __init__(self, c: TinyVLAConfig, cond_dim: int) -> None:
        super().__init__()
        n = c.chunk_size * c.action_dim
        self.time = TimestepEncoder(c.timestep_dim)
        self.inp = nn.Linear(n, c.head_width)
        self.blocks = nn.ModuleList(FiLMBlock(c.head_width, cond_dim + c.timestep_dim) for _ in range(c.head_blocks))
        self.outp = nn.Linear(c.head_width, n)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        full = torch.cat([cond, self.time(t)], dim=-1)
        h = self.inp(x.reshape(b, -1))
        for block in self.blocks:
            h = block(h, full)
        return self.outp(h).view_as(x)


class Conv1dBlock(nn.Module):
    """Conv1d → GroupNorm → Mish."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, padding=kernel // 2)
        self.norm = nn.GroupNorm(groups, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(self.norm(self.conv(x)))


class ConditionalResBlock1D(nn.Module):
    """Two conv blocks; the first one's output is FiLM-modulated (per channel) by the condition."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.block1 = Conv1dBlock(cin, cout, kernel, groups)
        self.block2 = Conv1dBlock(cout, cout, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.residual = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.block1(x) * scale + bias
        return self.block2(h) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Diffusion Policy's conditional 1-D U-Net (Chi et al. 2023) over the chunk's time axis.

    Levels of ``unet_dims`` channels, two FiLM residual blocks each, stride-2 down-sampling
    between levels, skip connections into a mirrored up path; the condition (pooled VLM
    state ⊕ proprio ⊕ timestep embedding) modulates every block."""

    def __init__(self, c: TinyVLAConfig, cond_dim: int) -> None:
        super().__init__()
        self.time = TimestepEncoder(c.timestep_dim)
        full = cond_dim + c.timestep_dim
        dims = [c.action_dim, *c.unet_dims]
        k, g = c.unet_kernel, c.unet_groups
        levels = list(zip(dims[:-1], dims[1:]))
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(levels):
            last = i == len(levels) - 1
            self.down.append(nn.ModuleList([
                ConditionalResBlock1D(cin, cout, full, k, g), ConditionalResBlock1D(cout, cout, full, k, g),
                nn.Identity() if last else nn.Conv1d(cout, cout, 3, stride=2, padding=1),
            ]))
        mid = dims[-1]
        self.mid = nn.ModuleList([ConditionalResBlock1D(mid, mid, full, k, g), ConditionalResBlock1D(mid, mid, full, k, g)])
        self.up = nn.ModuleList()
        for i, (cin, cout) in enumerate(reversed(levels[1:])):
            self.up.append(nn.ModuleList([
                ConditionalResBlock1D(cout * 2, cin, full, k, g), ConditionalResBlock1D(cin, cin, full, k, g),
                nn.ConvTranspose1d(cin, cin, 4, stride=2, padding=1),
            ]))
        start = dims[1]
        self.final = nn.Sequential(Conv1dBlock(start, start, k, g), nn.Conv1d(start, c.action_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        full = torch.cat([cond, self.time(t)], dim=-1)
        h = x.transpose(1, 2)  # (B, action_dim, chunk)
        skips = []
        for res1, res2, down in self.down:
            h = res2(res1(h, full), full)
            skips.append(h)
            h = down(h)
        for block in self.mid:
            h = block(h, full)
        for res1, res2, up in self.up:
            h = res2(res1(torch.cat([h, skips.pop()], dim=1), full), full)
            h = up(h)
        return self.final(h).transpose(1, 2)


def build_head(c: TinyVLAConfig, cond_dim: int) -> nn.Module:
    return ConditionalUnet1D(c, cond_dim) if c.head == "unet" else ConditionalMLP(c, cond_dim)
