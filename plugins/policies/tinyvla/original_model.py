"""The parts of the original TinyVLA (LLaVA-Pythia + Diffusion Policy head), re-stated for pushcut.

Written from reading the original code (liyaxuanliyaxuan/TinyVLA); module attribute names follow
the original's so that its state-dict keys load one to one:

* :class:`UnetHead` — the original's ``embed_out``: pooling → LayerNorm → ⊕ normalised state →
  Linear (``norm_after_pool``, ``combine``), then Diffusion Policy's conditional 1-D U-Net whose
  FiLM input is [step embedding, conditioning] in that order; the sinusoidal step embedding is
  computed in bfloat16 as the original computes it;
* :func:`build_projector` — LLaVA's ``mm_projector`` (``linear``, ``mlpNx_gelu``, ``identity``);
* :class:`VisionTower` — ``CLIPVisionModel``-shaped (``vision_model.*``), features of a chosen
  hidden layer (LLaVA: the second-to-last), class token dropped for ``patch``;
* :class:`DDIMSchedule` — diffusers' DDIMScheduler arithmetic (float32 ᾱ from float64 betas
  cast once, as diffusers 0.11 builds them), ``set_alpha_to_one``, ``steps_offset`` 0, ε-prediction;
* :func:`preprocess_views` — the original eval's image path: ÷255, 95 % centre crop, bilinear
  antialiased resize back, pad to square with the CLIP mean, the CLIP processor (uint8 round trip
  through PIL's bicubic resize, mean / std).
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pushcut.errors import CheckpointError, ConfigError

# The original's fixed settings (LlavaPythiaForCausalLM / ConditionalUnet1D constructor defaults).
TRAIN_TIMESTEPS = 100
INFERENCE_STEPS = 10
BETA_SCHEDULE = "squaredcos_cap_v2"
UNET_GROUPS = 8
UNET_DEFAULTS = dict(step_embed_dim=256, down_dims=(256, 512, 1024), kernel_size=5)
CROP_RATIO = 0.95
SYSTEM_PROMPT = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


# --------------------------------------------------------------------------- diffusion head


class StepEmbedding(nn.Module):
    """Sinusoidal embedding of integer steps, computed in bfloat16 (the original's dtype choice)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        scale = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.bfloat16) * -scale)
        angles = t[:, None] * freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(cin, cout, kernel, padding=kernel // 2), nn.GroupNorm(groups, cout),
                                   nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _FiLMResBlock(nn.Module):
    """conv block → per-channel scale·h + bias from the condition → conv block, plus a residual."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.out_channels = cout
        self.blocks = nn.ModuleList([_ConvBlock(cin, cout, kernel, groups), _ConvBlock(cout, cout, kernel, groups)])
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout), nn.Unflatten(-1, (-1, 1)))
        self.residual_conv = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.blocks[0](x)
        film = self.cond_encoder(cond).reshape(cond.shape[0], 2, self.out_channels, 1)
        h = film[:, 0] * h + film[:, 1]
        return self.blocks[1](h) + self.residual_conv(x)


class _Down(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Up(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UnetHead(nn.Module):
    """The original TinyVLA ``embed_out`` for ``action_head_type: droid_diffusion``.

    ``condition(hidden, valid, states)`` → (B, hidden): mean of the LLM's last hidden states over
    the row's own tokens → LayerNorm → ⊕ normalised state → Linear. ``forward(x, t, cond)`` → ε̂
    (B, chunk, action_dim) with FiLM input [step embedding(t), cond]."""

    def __init__(self, action_dim: int, hidden_size: int, state_dim: int, step_embed_dim: int = 256,
                 down_dims: tuple[int, ...] = (256, 512, 1024), kernel_size: int = 5, groups: int = UNET_GROUPS) -> None:
        super().__init__()
        dims = [action_dim, *down_dims]
        levels = list(zip(dims[:-1], dims[1:]))
        self.global_1d_pool = nn.AdaptiveAvgPool1d(1)  # no weights; pooling is done by ``condition``
        self.norm_after_pool = nn.LayerNorm(hidden_size)
        self.combine = nn.Linear(hidden_size + state_dim, hidden_size)
        self.diffusion_step_encoder = nn.Sequential(StepEmbedding(step_embed_dim),
                                                    nn.Linear(step_embed_dim, 4 * step_embed_dim), nn.Mish(),
                                                    nn.Linear(4 * step_embed_dim, step_embed_dim))
        cond_dim = step_embed_dim + hidden_size
        mid = dims[-1]
        self.mid_modules = nn.ModuleList([_FiLMResBlock(mid, mid, cond_dim, kernel_size, groups) for _ in range(2)])
        self.down_modules = nn.ModuleList()
        for i, (cin, cout) in enumerate(levels):
            self.down_modules.append(nn.ModuleList([
                _FiLMResBlock(cin, cout, cond_dim, kernel_size, groups),
                _FiLMResBlock(cout, cout, cond_dim, kernel_size, groups),
                _Down(cout) if i < len(levels) - 1 else nn.Identity()]))
        self.up_modules = nn.ModuleList()
        for cin, cout in reversed(levels[1:]):
            # In the original the "last" test of the up path can never be true: every level upsamples.
            self.up_modules.append(nn.ModuleList([
                _FiLMResBlock(cout * 2, cin, cond_dim, kernel_size, groups),
                _FiLMResBlock(cin, cin, cond_dim, kernel_size, groups), _Up(cin)]))
        # The final conv block uses the constructor's default of 8 groups whatever ``groups`` is.
        self.final_conv = nn.Sequential(_ConvBlock(down_dims[0], down_dims[0], kernel_size, UNET_GROUPS),
                                        nn.Conv1d(down_dims[0], action_dim, 1))

    def condition(self, hidden: torch.Tensor, valid: torch.Tensor, states: torch.Tensor | None) -> torch.Tensor:
        weights = valid.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        pooled = self.norm_after_pool(pooled)
        if states is not None:
            pooled = torch.cat([pooled, states.to(pooled.dtype)], dim=-1)
        return self.combine(pooled)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        embed = self.diffusion_step_encoder[0](t.expand(x.shape[0]))
        linear = self.diffusion_step_encoder[1]
        step = self.diffusion_step_encoder[1:](embed.to(linear.weight.dtype))
        film = torch.cat([step, cond], dim=-1)
        h = x.moveaxis(-1, -2)
        skips = []
        for res1, res2, down in self.down_modules:
            h = res2(res1(h, film), film)
            skips.append(h)
            h = down(h)
        for block in self.mid_modules:
            h = block(h, film)
        for res1, res2, up in self.up_modules:
            h = torch.cat((h, skips.pop()), dim=1)
            h = up(res2(res1(h, film), film))
        return self.final_conv(h).moveaxis(-1, -2)


def unet_shapes(tensors: dict[str, torch.Tensor], where: str) -> dict[str, object]:
    """U-Net widths read from a head's tensors (keys without the ``embed_out.`` prefix)."""
    try:
        step = tensors["diffusion_step_encoder.1.weight"].shape[1]
        kernel = tensors["down_modules.0.0.blocks.0.block.0.weight"].shape[2]
        dims, level = [], 0
        while f"down_modules.{level}.0.blocks.0.block.0.weight" in tensors:
            dims.append(tensors[f"down_modules.{level}.0.blocks.0.block.0.weight"].shape[0])
            level += 1
    except KeyError as exc:
        raise CheckpointError(f"{where} holds no diffusion U-Net head (missing embed_out.{exc.args[0]}); "
                              "pushcut loads TinyVLA runs with action_head_type droid_diffusion") from None
    return dict(step_embed_dim=int(step), down_dims=tuple(int(d) for d in dims), kernel_size=int(kernel))


# --------------------------------------------------------------------------- VLM parts


def build_projector(kind: str, vision_width: int, hidden_size: int) -> nn.Module:
    """LLaVA's ``mm_projector``: linear, mlpNx_gelu (Linear, then N−1 × (GELU, Linear)) or identity."""
    if kind == "linear":
        return nn.Linear(vision_width, hidden_size)
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if match:
        layers: list[nn.Module] = [nn.Linear(vision_width, hidden_size)]
        for _ in range(1, int(match.group(1))):
            layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
        return nn.Sequential(*layers)
    if kind == "identity":
        return nn.Identity()
    raise CheckpointError(f"unknown mm_projector_type {kind!r} (the original knows linear, mlpNx_gelu, identity)")


class VisionTower(nn.Module):
    """CLIP vision transformer under ``vision_model``; features of layer ``select_layer``."""

    def __init__(self, vision: dict) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        config = CLIPVisionConfig(
            hidden_size=vision["hidden_size"], intermediate_size=vision["intermediate_size"],
            num_hidden_layers=vision["num_hidden_layers"], num_attention_heads=vision["num_attention_heads"],
            num_channels=vision.get("num_channels", 3), image_size=vision["image_size"],
            patch_size=vision["patch_size"], hidden_act=vision.get("hidden_act", "quick_gelu"),
            layer_norm_eps=vision.get("layer_norm_eps", 1e-5), attention_dropout=0.0)
        config._attn_implementation = "eager"
        self.vision_model = CLIPVisionModel(config)  # transformers 5: the vision transformer itself
        self.select_layer = int(vision.get("mm_vision_select_layer", -2))
        self.select_feature = vision.get("mm_vision_select_feature", "patch")
        if self.select_feature not in ("patch", "cls_patch"):
            raise CheckpointError(f"unknown mm_vision_select_feature {self.select_feature!r} (patch or cls_patch)")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_model(pixel_values=pixel_values, output_hidden_states=True)
        features = out.hidden_states[self.select_layer]
        return features[:, 1:] if self.select_feature == "patch" else features


def build_llm(llm: dict) -> nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXModel

    config = GPTNeoXConfig(
        vocab_size=llm["vocab_size"], hidden_size=llm["hidden_size"], num_hidden_layers=llm["num_hidden_layers"],
        num_attention_heads=llm["num_attention_heads"], intermediate_size=llm["intermediate_size"],
        hidden_act=llm.get("hidden_act", "gelu"), max_position_embeddings=llm.get("max_position_embeddings", 2048),
        layer_norm_eps=llm.get("layer_norm_eps", 1e-5), use_parallel_residual=llm.get("use_parallel_residual", True),
        rope_parameters={"rope_type": "default", "rope_theta": llm.get("rotary_emb_base", 10000),
                         "partial_rotary_factor": llm.get("rotary_pct", 0.25)},
        attention_dropout=0.0, hidden_dropout=0.0, use_cache=False, tie_word_embeddings=False,
        attention_bias=llm.get("attention_bias", True))
    config._attn_implementation = "eager"
    return GPTNeoXModel(config)


# --------------------------------------------------------------------------- DDIM


class DDIMSchedule(nn.Module):
    """diffusers' DDIMScheduler (0.11) for the original's settings: 100 train steps, squaredcos_cap_v2,
    clip_sample, set_alpha_to_one, steps_offset 0, ε-prediction, 10 inference steps.

    Buffers (float32): ``timesteps`` (N,) t_N … t_1; ``alpha_t`` / ``alpha_prev`` (N,) ᾱ of each
    step and of its successor (1 after the last); ``ddim_sigma`` (N,) the η = 1 DDIM std."""

    def __init__(self, train_steps: int = TRAIN_TIMESTEPS, inference_steps: int = INFERENCE_STEPS) -> None:
        super().__init__()

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - alpha_bar((i + 1) / train_steps) / alpha_bar(i / train_steps), 0.999)
                              for i in range(train_steps)], dtype=torch.float32)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        ratio = train_steps // inference_steps
        steps = (torch.arange(0, inference_steps) * ratio).flip(0).long()
        prev = [alphas_cumprod[s - ratio] if s - ratio >= 0 else torch.tensor(1.0) for s in steps.tolist()]
        alpha_prev = torch.stack(prev).float()
        alpha_t = alphas_cumprod[steps]
        variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)
        self.register_buffer("timesteps", steps, persistent=False)
        self.register_buffer("alpha_t", alpha_t, persistent=False)
        self.register_buffer("alpha_prev", alpha_prev, persistent=False)
        self.register_buffer("ddim_sigma", variance ** 0.5, persistent=False)

    def step_mean(self, eps: torch.Tensor, x: torch.Tensor, k: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """μ of DDIM steps ``k`` (M,) from x (M, chunk, dim) given ε̂, with that step's std (M,); at std 0
        it is diffusers' ``step(...).prev_sample`` (η = 0)."""
        a_t = self.alpha_t[k].view(-1, 1, 1)
        a_p = self.alpha_prev[k].view(-1, 1, 1)
        x0 = ((x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5).clamp(-1, 1)
        direction = (1 - a_p - std.view(-1, 1, 1) ** 2).clamp(min=0.0) ** 0.5
        return a_p ** 0.5 * x0 + direction * eps


# --------------------------------------------------------------------------- inputs


def _crop_resize(views: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1]: the 95 % centre crop resized back (torchvision's tensor Resize =
    bilinear, antialiased, align_corners False)."""
    h, w = views.shape[-2:]
    top, bottom = int(h * (1 - CROP_RATIO) / 2), int(h * (1 + CROP_RATIO) / 2)
    left, right = int(w * (1 - CROP_RATIO) / 2), int(w * (1 + CROP_RATIO) / 2)
    cropped = views[..., top:bottom, left:right]
    return F.interpolate(cropped, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def _pad_square(image: np.ndarray, fill: tuple[float, ...]) -> np.ndarray:
    """(H, W, 3) float32 → (S, S, 3), centred, padded with ``fill`` (the original's expand2square)."""
    h, w = image.shape[:2]
    if h == w:
        return image
    size = max(h, w)
    out = np.empty((size, size, 3), dtype=np.float32)
    out[...] = np.asarray(fill, dtype=np.float32)
    if h > w:
        off = (size - w) // 2
        out[:h, off:off + w] = image
    else:
        off = (size - h) // 2
        out[off:off + h, :w] = image
    return out


def _clip_process(image: np.ndarray, size: int, mean: np.ndarray, std: np.ndarray, resample: int) -> np.ndarray:
    """transformers' CLIPImageProcessor on a float (S, S, 3) image with do_rescale=False, no centre
    crop: through PIL as uint8 (values × 255 truncated), resized, back ÷ 255, then (x − mean) / std."""
    from PIL import Image

    integral = np.allclose(image, image.astype(int))
    rescale = not integral
    if not integral and not (image.min() >= 0 and image.max() <= 1):
        raise ValueError("image values must lie in [0, 1]")
    as_u8 = ((image * 255).astype(np.float32) if rescale else image).astype(np.uint8)
    resized = np.array(Image.fromarray(as_u8).resize((size, size), resample=resample, reducing_gap=None))
    pixels = (resized * (1 / 255)).astype(np.float32) if rescale else resized.astype(np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1)


def preprocess_views(views: np.ndarray, processor: dict) -> torch.Tensor:
    """(B, H, W, 3) uint8 of one camera → (B, 3, S, S) float32 pixel values, as the original eval makes them."""
    x = torch.from_numpy(np.ascontiguousarray(views) / 255.0).float().permute(0, 3, 1, 2)
    x = _crop_resize(x)
    mean = np.asarray(processor["image_mean"], dtype=np.float32)
    std = np.asarray(processor["image_std"], dtype=np.float32)
    fill = tuple(float(v) for v in processor["image_mean"])
    out = [_clip_process(_pad_square(img.permute(1, 2, 0).numpy(), fill), processor["size"], mean, std,
                         processor["resample"]) for img in x]
    return torch.from_numpy(np.stack(out))


def processor_settings(config: dict, where: str) -> dict:
    """The CLIP processor settings the original eval uses, from a ``preprocessor_config.json``."""
    size = config.get("size", 224)
    if isinstance(size, dict):
        size = size.get("shortest_edge", size.get("height"))
    if not isinstance(size, int):
        raise CheckpointError(f"{where}: cannot read the image size from {config.get('size')!r}")
    for key in ("image_mean", "image_std"):
        if not isinstance(config.get(key), list) or len(config[key]) != 3:
            raise CheckpointError(f"{where} lacks {key} (three numbers)")
    return {"size": size, "image_mean": config["image_mean"], "image_std": config["image_std"],
            "resample": int(config.get("resample", 3))}


class PromptTokenizer:
    """The Pythia BPE tokenizer (``tokenizer.json``, read with ``tokenizers``) and the original eval's
    prompt: the ``pythia`` conversation with the image placeholder before the instruction, then
    ``" <|endoftext|>"``. ``encode`` → (ids before the image, ids after it)."""

    def __init__(self, path) -> None:
        import json
        from pathlib import Path

        from tokenizers import Tokenizer

        path = Path(path)
        try:
            spec = json.loads(path.read_text())
            # transformers' GPTNeoXTokenizerFast (4.37) sets the byte-level pre-tokenizer's add_prefix_space
            # to its own argument (tokenizer_config.json, default false); do the same.
            config_path = path.parent / "tokenizer_config.json"
            config = json.loads(config_path.read_text()) if config_path.is_file() else {}
            pre = spec.get("pre_tokenizer") or {}
            if pre.get("type") == "ByteLevel":
                pre["add_prefix_space"] = bool(config.get("add_prefix_space", False))
            self.tokenizer = Tokenizer.from_str(json.dumps(spec))
        except Exception as exc:  # tokenizers raises its own exception type
            raise CheckpointError(f"cannot read the tokenizer {path}: {exc}") from None
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self._cache: dict[str, tuple[list[int], list[int]]] = {}

    def encode(self, instruction: str) -> tuple[list[int], list[int]]:
        if instruction not in self._cache:
            prompt = f"{SYSTEM_PROMPT} USER: <image>\n{instruction} ASSISTANT: <|endoftext|>"
            before, after = prompt.split("<image>", 1)
            self._cache[instruction] = (self.tokenizer.encode(before).ids, self.tokenizer.encode(after).ids)
        return self._cache[instruction]


def check_positive_dims(where: str, **dims: int) -> None:
    bad = [k for k, v in dims.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if bad:
        raise ConfigError(f"{where}: {bad[0]} must be a positive integer, got {dims[bad[0]]!r}")
