"""Tiny random-weight OpenVLA checkpoints in the original prismatic layout, and an independent
reference forward pass written directly against the original (timm) tensor names.

The checkpoint has the real config.json structure (vision_backbone_id, timm_model_ids,
image_sizes, text_config, norm_stats, pad_to_multiple_of …), a 32064-row Llama embedding as in
the 7B model, the timm key names of both vision towers (cls/register tokens, fused qkv, layer
scale ``scale_factor``, SigLIP's unused ``attn_pool.*``), and a real 32000-piece SentencePiece
tokenizer: mistral-common's ``tokenizer.model.v1`` (its "▁" id is 28705, not Llama's 29871).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F

TIMM_IDS = ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"]
LIBERO_KEY = "libero_10_no_noops"
ALOHA_KEY = "aloha_tiny"
VOCAB = 32064
PAD_MULTIPLE = 64
VISION_HEADS = 16


def mistral_tokenizer_path() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


def norm_stats(action_dim: int = 7, proprio_dim: int = 8) -> dict:
    rng = np.random.default_rng(1)
    low = -rng.uniform(0.2, 1.0, action_dim)
    high = rng.uniform(0.2, 1.0, action_dim)
    entry = {
        "action": {"mean": [0.0] * action_dim, "std": [1.0] * action_dim,
                   "max": (high * 1.2).tolist(), "min": (low * 1.2).tolist(),
                   "q01": low.tolist(), "q99": high.tolist(),
                   "mask": [True] * (action_dim - 1) + [False]},
        "proprio": {"mean": [0.0] * proprio_dim, "std": [1.0] * proprio_dim,
                    "max": [1.0] * proprio_dim, "min": [-1.0] * proprio_dim,
                    "q01": [-0.9] * proprio_dim, "q99": [0.9] * proprio_dim},
        "num_transitions": 1000, "num_trajectories": 10,
    }
    aloha = json.loads(json.dumps(entry))
    aloha["action"]["mask"] = [True] * action_dim
    return {LIBERO_KEY: entry, ALOHA_KEY: aloha}


def _vit(prefix: str, gen: torch.Generator, hidden: int, layers: int, patches: int, dino: bool, mlp: int) -> dict:
    """One timm ViT tower's tensors, *stressed*: every bias, norm gain and norm bias, and the layer
    scale, sits far from its initial value (0, 1, 0, 1e-5), so a loader that drops or swaps any of
    them, or a forward that ignores one, changes the features visibly."""
    def rnd(*shape, std=0.05):
        return torch.randn(*shape, generator=gen) * std

    def gain(*shape):  # norm weights in [0.5, 1.5]
        return 0.5 + torch.rand(*shape, generator=gen)

    t = {f"{prefix}pos_embed": rnd(1, patches, hidden, std=0.1),
         f"{prefix}patch_embed.proj.weight": rnd(hidden, 3, 14, 14, std=0.02),
         f"{prefix}patch_embed.proj.bias": rnd(hidden, std=0.2),
         f"{prefix}norm.weight": gain(hidden), f"{prefix}norm.bias": rnd(hidden, std=0.3)}
    if dino:
        t[f"{prefix}cls_token"] = rnd(1, 1, hidden, std=0.5)
        t[f"{prefix}reg_token"] = rnd(1, 4, hidden, std=0.5)
    else:  # SigLIP's MAP head: in the weights, never used by OpenVLA
        t.update({f"{prefix}attn_pool.latent": rnd(1, 1, hidden), f"{prefix}attn_pool.q.weight": rnd(hidden, hidden),
                  f"{prefix}attn_pool.q.bias": rnd(hidden), f"{prefix}attn_pool.kv.weight": rnd(2 * hidden, hidden),
                  f"{prefix}attn_pool.kv.bias": rnd(2 * hidden), f"{prefix}attn_pool.proj.weight": rnd(hidden, hidden),
                  f"{prefix}attn_pool.proj.bias": rnd(hidden), f"{prefix}attn_pool.norm.weight": gain(hidden),
                  f"{prefix}attn_pool.norm.bias": rnd(hidden),
                  f"{prefix}attn_pool.mlp.fc1.weight": rnd(mlp, hidden),
                  f"{prefix}attn_pool.mlp.fc1.bias": rnd(mlp),
                  f"{prefix}attn_pool.mlp.fc2.weight": rnd(hidden, mlp),
                  f"{prefix}attn_pool.mlp.fc2.bias": rnd(hidden)})
    w = 3.0 / math.sqrt(hidden)  # ~unit-variance pre-activations whatever the width
    for i in range(layers):
        b = f"{prefix}blocks.{i}."
        t.update({b + "norm1.weight": gain(hidden), b + "norm1.bias": rnd(hidden, std=0.3),
                  b + "attn.qkv.weight": rnd(3 * hidden, hidden, std=w), b + "attn.qkv.bias": rnd(3 * hidden, std=0.3),
                  b + "attn.proj.weight": rnd(hidden, hidden, std=w / 4), b + "attn.proj.bias": rnd(hidden, std=0.1),
                  b + "norm2.weight": gain(hidden), b + "norm2.bias": rnd(hidden, std=0.3),
                  b + "mlp.fc1.weight": rnd(mlp, hidden, std=w / 2), b + "mlp.fc1.bias": rnd(mlp, std=0.5),
                  b + "mlp.fc2.weight": rnd(hidden, mlp, std=0.5 / math.sqrt(mlp)),
                  b + "mlp.fc2.bias": rnd(hidden, std=0.1)})
        if dino:
            t[b + "ls1.scale_factor"] = 0.1 + 0.9 * torch.rand(hidden, generator=gen)
            t[b + "ls2.scale_factor"] = 0.1 + 0.9 * torch.rand(hidden, generator=gen)
    return t


def make_tiny_checkpoint(
    directory: str | Path,
    *,
    image_size: int = 28,
    dino_hidden: int = 32,
    siglip_hidden: int = 48,
    siglip_mlp: int | None = None,
    vision_layers: int = 3,
    timm_ids: tuple[str, str] = TIMM_IDS,
    llm_hidden: int = 64,
    llm_layers: int = 2,
    llm_heads: int = 4,
    llm_kv_heads: int = 2,
    proprio_dim: int = 0,
    proprio_file: bool = False,
    action_dim: int = 7,
    dtype: torch.dtype = torch.float32,
    shards: int = 1,
    seed: int = 0,
) -> Path:
    """Write a tiny OpenVLA(-OFT) checkpoint into ``directory`` and return it. With
    ``dino_hidden=1024, siglip_hidden=1152, siglip_mlp=4304, image_size=224`` the towers have the
    real models' widths (only fewer blocks), so timm can build them from their ids."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    patches = (image_size // 14) ** 2
    t = {}
    t.update(_vit("vision_backbone.featurizer.", gen, dino_hidden, vision_layers, patches, dino=True,
                  mlp=4 * dino_hidden))
    t.update(_vit("vision_backbone.fused_featurizer.", gen, siglip_hidden, vision_layers, patches, dino=False,
                  mlp=siglip_mlp or 4 * siglip_hidden))
    vd = dino_hidden + siglip_hidden

    def rnd(*shape, std=0.05):
        return torch.randn(*shape, generator=gen) * std

    t.update({"projector.fc1.weight": rnd(4 * vd, vd, std=1 / math.sqrt(vd)), "projector.fc1.bias": rnd(4 * vd, std=0.3),
              "projector.fc2.weight": rnd(llm_hidden, 4 * vd, std=1 / math.sqrt(vd)),
              "projector.fc2.bias": rnd(llm_hidden, std=0.3),
              "projector.fc3.weight": rnd(llm_hidden, llm_hidden, std=0.1), "projector.fc3.bias": rnd(llm_hidden, std=0.3)})
    head_dim = llm_hidden // llm_heads
    inter = 2 * llm_hidden
    lm = {"model.embed_tokens.weight": rnd(VOCAB, llm_hidden, std=0.5), "model.norm.weight": 0.5 + torch.rand(llm_hidden, generator=gen),
          "lm_head.weight": rnd(VOCAB, llm_hidden, std=0.3)}
    for i in range(llm_layers):
        p = f"model.layers.{i}."
        lm.update({p + "self_attn.q_proj.weight": rnd(llm_heads * head_dim, llm_hidden, std=0.15),
                   p + "self_attn.k_proj.weight": rnd(llm_kv_heads * head_dim, llm_hidden, std=0.15),
                   p + "self_attn.v_proj.weight": rnd(llm_kv_heads * head_dim, llm_hidden, std=0.15),
                   p + "self_attn.o_proj.weight": rnd(llm_hidden, llm_heads * head_dim, std=0.15),
                   p + "mlp.gate_proj.weight": rnd(inter, llm_hidden, std=0.15),
                   p + "mlp.up_proj.weight": rnd(inter, llm_hidden, std=0.15),
                   p + "mlp.down_proj.weight": rnd(llm_hidden, inter, std=0.15),
                   p + "input_layernorm.weight": 0.5 + torch.rand(llm_hidden, generator=gen),
                   p + "post_attention_layernorm.weight": 0.5 + torch.rand(llm_hidden, generator=gen)})
    t.update({f"language_model.{k}": v for k, v in lm.items()})
    proprio = {}
    if proprio_dim:
        proprio = {"fc1.weight": rnd(llm_hidden, proprio_dim, std=0.3), "fc1.bias": rnd(llm_hidden),
                   "fc2.weight": rnd(llm_hidden, llm_hidden, std=0.3), "fc2.bias": rnd(llm_hidden)}
        if proprio_file:  # OpenVLA-OFT ships it beside the model, with DDP's "module." prefix
            torch.save({f"module.{k}": v for k, v in proprio.items()},
                       directory / "proprio_projector--50000_checkpoint.pt")
        else:  # SimpleVLA-RL saves it inside the model
            t.update({f"proprio_projector.{k}": v for k, v in proprio.items()})
    t = {k: v.to(dtype).contiguous() for k, v in t.items()}

    keys = sorted(t)
    if shards == 1:
        safetensors.torch.save_file(t, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
        per = math.ceil(len(keys) / shards)
        weight_map = {}
        for i, name in enumerate(names):
            part = {k: t[k] for k in keys[i * per:(i + 1) * per]}
            safetensors.torch.save_file(part, str(directory / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in part})
        total = sum(v.numel() * v.element_size() for v in t.values())
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")

    config = {
        "arch_specifier": "no-align+fused-gelu-mlp",
        "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                     "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"},
        "hf_llm_id": "meta-llama/Llama-2-7b-hf",
        "image_resize_strategy": "resize-naive",
        "image_sizes": [image_size, image_size],
        "llm_backbone_id": "llama2-7b-pure",
        "llm_max_length": 2048,
        "model_type": "openvla",
        "n_action_bins": 256,
        "norm_stats": norm_stats(action_dim, proprio_dim or 8),
        "output_projector_states": False,
        "pad_to_multiple_of": PAD_MULTIPLE,
        "pad_token_id": 32000,
        "text_config": {"model_type": "llama", "pad_token_id": 32000, "torch_dtype": "bfloat16", "vocab_size": VOCAB,
                        "hidden_size": llm_hidden, "intermediate_size": inter, "num_hidden_layers": llm_layers,
                        "num_attention_heads": llm_heads, "num_key_value_heads": llm_kv_heads,
                        "rms_norm_eps": 1e-06},
        "timm_model_ids": list(timm_ids),
        "timm_override_act_layers": [None, None],
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1",
        "use_fused_vision_backbone": True,
        "vision_backbone_id": "dinosiglip-vit-so-224px",
    }
    if proprio_dim:
        config.update(use_proprio=True, proprio_dim=proprio_dim)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    preprocessor = {
        "auto_map": {"AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
                     "AutoProcessor": "processing_prismatic.PrismaticProcessor"},
        "image_processor_type": "PrismaticImageProcessor",
        "image_resize_strategy": "resize-naive",
        "input_sizes": [[3, image_size, image_size], [3, image_size, image_size]],
        "interpolations": ["bicubic", "bicubic"],
        "means": [[0.485, 0.456, 0.406], [0.5, 0.5, 0.5]],
        "stds": [[0.229, 0.224, 0.225], [0.5, 0.5, 0.5]],
        "processor_class": "PrismaticProcessor",
        "tvf_crop_params": [{"output_size": [image_size, image_size]}] * 2,
        "use_fused_vision_backbone": True,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    shutil.copyfile(mistral_tokenizer_path(), directory / "tokenizer.model")
    return directory


# --------------------------------------------------------------------------- reference forward
#
# Written from the original architecture description (OpenVLA's prismatic code with timm towers,
# Llama-2, OpenVLA-OFT's parallel decoding, SimpleVLA-RL's rollout), never from pushcut's modules:
#
# * towers: timm ViTs (``vit_large_patch14_reg4_dinov2``, ``vit_so400m_patch14_siglip_224``) with
#   timm's default ``nn.GELU()`` — the exact erf GELU, SigLIP included — LayerNorm eps 1e-6, fused
#   qkv, DINOv2's layer scale and 1 cls + 4 register tokens without positions; the featurizer is
#   ``get_intermediate_layers(n={blocks - 2})``: the output of the second-to-last block, no norm,
#   prefix tokens dropped;
# * projector: fc1 → GELU → fc2 → GELU → fc3 (erf GELU, torch's nn.GELU);
# * prompt: BOS + "In: What action should the robot take to {lower}?\nOut:" + the literal id 29871
#   when the last id is not 29871 (``predict_action``; SimpleVLA-RL's rollout);
# * parallel (OFT): [BOS][patches][prompt][T zero embeddings][EOS], bidirectional attention, element
#   k read at position patches + prompt + k; AR: causal, the whole sequence re-run for every token;
# * ids → actions: discretised = vocab - id, clip(discretised - 1, 0, 254) indexes the 255 bin
#   centres of linspace(-1, 1, 256); then 0.5 (x + 1)(q99 - q01 + 1e-8) + q01 where the mask is set
#   (OFT's +1e-8; OpenVLA's original ``predict_action`` has no 1e-8).

APPENDED_ID = 29871
N_BINS = 256


def _ln(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps=1e-6)


def _vit_features(t: dict, prefix: str, pixels: torch.Tensor, dino: bool, layers: int, heads: int) -> torch.Tensor:
    g = lambda k: t[prefix + k]  # noqa: E731
    x = F.conv2d(pixels, g("patch_embed.proj.weight"), g("patch_embed.proj.bias"), stride=14)
    x = x.flatten(2).transpose(1, 2) + g("pos_embed")
    b = x.shape[0]
    if dino:
        x = torch.cat([g("cls_token").expand(b, -1, -1), g("reg_token").expand(b, -1, -1), x], dim=1)
    hidden = x.shape[-1]
    hd = hidden // heads
    for i in range(layers - 1):  # blocks up to and including the second-to-last
        p = f"blocks.{i}."
        h = _ln(x, g(p + "norm1.weight"), g(p + "norm1.bias"))
        qkv = (h @ g(p + "attn.qkv.weight").T + g(p + "attn.qkv.bias")).reshape(b, -1, 3, heads, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
        att = att.transpose(1, 2).reshape(b, -1, hidden) @ g(p + "attn.proj.weight").T + g(p + "attn.proj.bias")
        x = x + (att * g(p + "ls1.scale_factor") if dino else att)
        h = _ln(x, g(p + "norm2.weight"), g(p + "norm2.bias"))
        h = F.gelu(h @ g(p + "mlp.fc1.weight").T + g(p + "mlp.fc1.bias"))  # timm's nn.GELU(): exact erf
        h = h @ g(p + "mlp.fc2.weight").T + g(p + "mlp.fc2.bias")
        x = x + (h * g(p + "ls2.scale_factor") if dino else h)
    return x[:, 5:] if dino else x


def _rms(x, w, eps=1e-6):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, positions):
    d = x.shape[-1]
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = positions[:, None].float() * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    rot = torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)
    return x * cos + rot * sin


def llama_hidden(t: dict, config: dict, inputs: torch.Tensor, causal: bool) -> torch.Tensor:
    """A plain Llama-2 forward of one unpadded sequence (L, D) from the original weight names."""
    tc = config["text_config"]
    heads, kv = tc["num_attention_heads"], tc["num_key_value_heads"]
    d = inputs.shape[-1]
    hd = d // heads
    g = lambda k: t["language_model.model." + k]  # noqa: E731
    x = inputs
    n = x.shape[0]
    pos = torch.arange(n)
    allowed = torch.ones(n, n, dtype=torch.bool).tril() if causal else torch.ones(n, n, dtype=torch.bool)
    for i in range(tc["num_hidden_layers"]):
        p = f"layers.{i}."
        h = _rms(x, g(p + "input_layernorm.weight"))
        q = (h @ g(p + "self_attn.q_proj.weight").T).view(n, heads, hd).transpose(0, 1)
        k = (h @ g(p + "self_attn.k_proj.weight").T).view(n, kv, hd).transpose(0, 1)
        v = (h @ g(p + "self_attn.v_proj.weight").T).view(n, kv, hd).transpose(0, 1)
        q, k = _rope(q, pos), _rope(k, pos)
        k, v = k.repeat_interleave(heads // kv, 0), v.repeat_interleave(heads // kv, 0)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1) @ v
        x = x + att.transpose(0, 1).reshape(n, d) @ g(p + "self_attn.o_proj.weight").T
        h = _rms(x, g(p + "post_attention_layernorm.weight"))
        h = (F.silu(h @ g(p + "mlp.gate_proj.weight").T) * (h @ g(p + "mlp.up_proj.weight").T))
        x = x + h @ g(p + "mlp.down_proj.weight").T
    return _rms(x, g("norm.weight"))


class Reference:
    """Single-observation OpenVLA decoding, looped one observation (and for the autoregressive mode
    one token) at a time with no padding, no cache and no batching, in float64 — straight from the
    description above, to compare the batched policy against."""

    def __init__(self, directory: Path, vision_heads: int = VISION_HEADS) -> None:
        directory = Path(directory)
        self.t = {k: v.double() for k, v in safetensors.torch.load_file(str(directory / "model.safetensors")).items()}
        self.config = json.loads((directory / "config.json").read_text())
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
        self.layers = 1 + max(int(k.split(".")[3]) for k in self.t if ".featurizer.blocks." in k)
        self.heads = vision_heads
        self.vocab = self.config["text_config"]["vocab_size"] - self.config["pad_to_multiple_of"]
        self.first = self.vocab - N_BINS

    def pixels(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One (H, W, 3) uint8 image, already at the towers' size → (DINOv2, SigLIP) pixel values."""
        x = torch.from_numpy(image).permute(2, 0, 1).double()[None] / 255
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        dino = (x - mean.view(1, 3, 1, 1).double()) / std.view(1, 3, 1, 1).double()
        return dino, (x - 0.5) / 0.5

    def features(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        dino, sig = self.pixels(image)
        return (_vit_features(self.t, "vision_backbone.featurizer.", dino, True, self.layers, self.heads)[0],
                _vit_features(self.t, "vision_backbone.fused_featurizer.", sig, False, self.layers, self.heads)[0])

    def patches(self, image: np.ndarray) -> torch.Tensor:
        f = torch.cat(self.features(image), dim=-1)
        g = lambda k: self.t["projector." + k]  # noqa: E731
        h = F.gelu(f @ g("fc1.weight").T + g("fc1.bias"))
        h = F.gelu(h @ g("fc2.weight").T + g("fc2.bias"))
        return h @ g("fc3.weight").T + g("fc3.bias")

    def prompt_ids(self, instruction: str) -> list[int]:
        prompt = f"In: What action should the robot take to {instruction.lower()}?\nOut:"
        ids = [self.sp.bos_id(), *self.sp.encode(prompt)]
        return ids + ([APPENDED_ID] if ids[-1] != APPENDED_ID else [])

    def embed(self, ids) -> torch.Tensor:
        return self.t["language_model.model.embed_tokens.weight"][torch.as_tensor(ids, dtype=torch.long)]

    def action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.t["language_model.lm_head.weight"][self.first: self.vocab].T

    def parallel(self, image: np.ndarray, instruction: str, num_tokens: int) -> torch.Tensor:
        """(T, 256) action logits of OFT's parallel decoding for one observation."""
        ids = self.prompt_ids(instruction)
        patches = self.patches(image)
        seq = torch.cat([self.embed(ids[:1]), patches, self.embed(ids[1:]),
                         torch.zeros(num_tokens, patches.shape[-1], dtype=patches.dtype),
                         self.embed([self.sp.eos_id()])])
        hidden = llama_hidden(self.t, self.config, seq, causal=False)
        start = len(patches) + len(ids) - 1
        return self.action_logits(hidden[start: start + num_tokens])

    def autoregressive(self, image: np.ndarray, instruction: str, num_tokens: int,
                       given: list[int] | None = None) -> tuple[list[int], torch.Tensor]:
        """Greedy tokens (or ``given`` ones, teacher-forced) and their (T, 256) logits, re-running the
        whole causal sequence for every token."""
        ids = self.prompt_ids(instruction)
        patches = self.patches(image)
        tokens, logits = [], []
        for i in range(num_tokens):
            seq = torch.cat([self.embed(ids[:1]), patches, self.embed(ids[1:] + tokens)])
            step = self.action_logits(llama_hidden(self.t, self.config, seq, causal=True)[-1])
            logits.append(step)
            tokens.append(given[i] if given is not None else int(step.argmax()) + self.first)
        return tokens, torch.stack(logits)

    def log_probs(self, logits: torch.Tensor, tokens: list[int], temperature: float) -> torch.Tensor:
        """log softmax(logits / temperature) at the given action ids: (T,)."""
        logp = torch.log_softmax(logits / temperature, dim=-1)
        return logp[torch.arange(len(tokens)), torch.tensor(tokens) - self.first]

    def actions(self, tokens: list[int], key: str, chunk: int, oft: bool = True) -> np.ndarray:
        """Action ids → env-unit actions (chunk, action_dim), as OpenVLA(-OFT) un-normalises."""
        bins = np.linspace(-1, 1, N_BINS)
        centers = (bins[:-1] + bins[1:]) / 2.0
        discretized = np.clip(self.vocab - np.asarray(tokens) - 1, a_min=0, a_max=centers.shape[0] - 1)
        normalized = centers[discretized].reshape(chunk, -1)
        stats = self.config["norm_stats"][key]["action"]
        mask = np.array(stats.get("mask", np.ones_like(stats["q01"], dtype=bool)))
        high, low = np.array(stats["q99"]), np.array(stats["q01"])
        eps = 1e-8 if oft else 0.0
        return np.where(mask, 0.5 * (normalized + 1) * (high - low + eps) + low, normalized)
