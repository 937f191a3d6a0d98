"""TinyTokenVLA: a small, randomly initialised VLA with OpenVLA-OFT-style parallel action decoding.

Sequence the decoder sees, per observation (left to right)::

    [image patches][wrist patches]? [state]? [pad … BOS instruction-bytes EOS][a_0 … a_{T-1}]
    └──────────────────────────── prefix (P tokens) ──────────────────────────┘└─ action block ─┘

* image patches: SigLIP vision encoder (transformers' ``SiglipVisionModel``,
  built from a config) → MLP projector, (image_size / patch_size)² tokens;
* wrist patches: the same encoder, plus a learned view embedding;
* state: one token, a linear projection of ``ObsBatch.states``;
* instruction: UTF-8 byte tokens embedded by the decoder's own token embedding,
  left-padded to the longest instruction in the batch, each group of
  ``text_patch_size`` bytes merged into one token by a linear layer (bytes make
  long sequences; this keeps the decoder cheap on CPU);
* action block: T = chunk_size × action_dim learned placeholder embeddings
  (chunk-major: element t is action ``t // action_dim``, dim ``t % action_dim``).

One forward pass of a Llama decoder (``LlamaModel``, SDPA) with a custom 4D
boolean mask decodes all T elements in parallel, as OpenVLA-OFT / SimpleVLA-RL
do: the prefix is **causal** (as a pretrained LLM expects; prefix outputs never
depend on the action block), and every action placeholder attends to the whole
prefix and to **all** action placeholders (bidirectional inside the block).
Pad tokens are masked out as keys and skipped by the position ids, so a row's
outputs do not depend on how much padding its batch needed.

A value head (PPO's critic, the :class:`pushcut.contracts.ValueHead` capability) maps the
mean of the action block's final hidden states (detached unless ``value_detach`` is off)
through a two-layer MLP to one value per observation.

Each placeholder's final hidden state gives logits over ``n_bins`` bins of the
normalised range [-1, 1] (:class:`pushcut.actions.ActionTokenizer` binning);
bin centres are mapped linearly to env units with ``action_low``/``action_high``.
With ``bin_smoothing`` > 0 those logits are blurred across neighbouring bins by
a fixed Gaussian, so the bins are ordered rather than independent classes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

from pushcut.actions import (
    ActionTokenizer,
    categorical_entropy,
    normalize_actions,
    sample_categorical,
    unnormalize_actions,
)
from pushcut.contracts import NO_WRIST_IMAGE_FIX, ActionSample, ObsBatch, Policy, Scores
from pushcut.errors import CheckpointError, ConfigError, short_list
from pushcut.plugins.policies.tiny.config import TinyTokenVLAConfig
from pushcut.plugins.policies.tiny.text import ByteTokenizer

POLICY_TYPE = "tiny"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "pushcut_policy.json"


class TinyTokenVLA(Policy):
    """The ``tiny`` policy. See the module docstring for the architecture."""

    def __init__(self, config: TinyTokenVLAConfig | None = None) -> None:
        super().__init__()
        config = config or TinyTokenVLAConfig()
        self.config = config
        self.chunk_size = config.chunk_size
        self.action_dim = config.action_dim
        self.num_action_tokens = config.num_action_tokens
        self.text_tokenizer = ByteTokenizer(config.max_instruction_tokens)
        # The action head predicts bin indices directly, so the token-id side of the
        # tokenizer is unused here; vocab_size=n_bins just satisfies its contract.
        self.action_tokenizer = ActionTokenizer(vocab_size=config.n_bins, n_bins=config.n_bins)

        # Build under a private RNG so weights depend on config.seed only, and building a
        # policy does not disturb the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self._build(config)
        if config.checkpoint is not None:
            self.load(Path(config.checkpoint))

    def _build(self, c: TinyTokenVLAConfig) -> None:
        vision_config = SiglipVisionConfig(
            hidden_size=c.vision_hidden_size,
            intermediate_size=c.vision_intermediate_size,
            num_hidden_layers=c.vision_layers,
            num_attention_heads=c.vision_heads,
            image_size=c.image_size,
            patch_size=c.patch_size,
            attention_dropout=0.0,
            vision_use_head=False,  # we want every patch token, not a pooled vector
        )
        vision_config._attn_implementation = "sdpa"
        self.vision = SiglipVisionModel(vision_config)
        # OpenVLA's projector shape (Linear-GELU-Linear), scaled down.
        self.projector = nn.Sequential(
            nn.Linear(c.vision_hidden_size, c.hidden_size), nn.GELU(), nn.Linear(c.hidden_size, c.hidden_size)
        )
        self.wrist_view_embedding = nn.Parameter(torch.zeros(c.hidden_size)) if c.use_wrist_image else None
        self.state_projector = nn.Linear(c.state_dim, c.hidden_size) if c.use_state else None
        # Byte patching (as MegaByte-style byte models do): text_patch_size byte embeddings,
        # concatenated, become one decoder token.
        self.text_patcher = (
            nn.Linear(c.text_patch_size * c.hidden_size, c.hidden_size) if c.text_patch_size > 1 else None
        )

        self.prefix_image_tokens = c.num_patches * (2 if c.use_wrist_image else 1)
        text_tokens = -(-c.max_instruction_tokens // c.text_patch_size)
        max_len = self.prefix_image_tokens + int(c.use_state) + text_tokens + c.num_action_tokens
        decoder_config = LlamaConfig(
            vocab_size=self.text_tokenizer.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_hidden_layers=c.layers,
            num_attention_heads=c.heads,
            num_key_value_heads=c.heads,
            max_position_embeddings=max_len,
            pad_token_id=self.text_tokenizer.pad_id,
            attention_dropout=0.0,  # act() and log_probs() must compute identical logits
            use_cache=False,
        )
        decoder_config._attn_implementation = "sdpa"
        self.decoder = LlamaModel(decoder_config)
        self.action_queries = nn.Parameter(torch.randn(c.num_action_tokens, c.hidden_size) * 0.02)
        self.action_head = nn.Linear(c.hidden_size, c.n_bins)
        # Built last, so every other weight is what it was before the head existed.
        self.value_head = nn.Sequential(nn.Linear(c.hidden_size, c.hidden_size), nn.Tanh(),
                                        nn.Linear(c.hidden_size, 1))
        # Not saved: the blur is a function of the config alone.
        self.register_buffer("bin_blur", _gaussian_blur(c.n_bins, c.bin_smoothing), persistent=False)

    # ------------------------------------------------------------------ inputs

    def _check_obs(self, obs: ObsBatch) -> None:
        c = self.config
        expected = (c.image_size, c.image_size, 3)
        views = [("images", obs.images)]
        if c.use_wrist_image:
            if obs.wrist_images is None:
                raise ConfigError(
                    f"policy.use_wrist_image is true but the observations have no wrist_image; {NO_WRIST_IMAGE_FIX}, "
                    "or set policy.use_wrist_image=false"
                )
            views.append(("wrist_images", obs.wrist_images))
        for name, images in views:
            if images.ndim != 4 or tuple(images.shape[1:]) != expected:
                raise ConfigError(
                    f"ObsBatch.{name} has shape {tuple(images.shape)} but the tiny policy expects (B, {c.image_size}, "
                    f"{c.image_size}, 3); set policy.image_size to the env's camera size or render at {c.image_size}px"
                )
            if images.dtype != np.uint8:
                raise ValueError(f"ObsBatch.{name} must be uint8, got {images.dtype}")
        if c.use_state:
            if obs.states is None:
                raise ConfigError(
                    "policy.use_state is true but the observations have no state; set policy.use_state=false "
                    "or use an env that reports one"
                )
            if obs.states.ndim != 2 or obs.states.shape[1] != c.state_dim:
                raise ConfigError(
                    f"ObsBatch.states has shape {tuple(obs.states.shape)} but policy.state_dim={c.state_dim}; "
                    f"set policy.state_dim={obs.states.shape[-1]}"
                )

    def _pixels(self, images: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 → (B, 3, H, W) float in [-1, 1] (SigLIP's mean 0.5 / std 0.5)."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        # Scale in HWC layout, then permute as a view: the patch convolution takes the
        # channels-last strides directly, which avoids a slow strided uint8 copy.
        return x.float().div_(127.5).sub_(1.0).permute(0, 3, 1, 2)

    def _prefix(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix embeddings (B, P, H) and key-validity mask (B, P) bool."""
        self._check_obs(obs)
        b = len(obs)
        pixels = self._pixels(obs.images)
        if self.config.use_wrist_image:
            # One encoder pass over both views is cheaper than two.
            pixels = torch.cat([pixels, self._pixels(obs.wrist_images)])
        patches = self.projector(self.vision(pixel_values=pixels).last_hidden_state)
        parts = [patches[:b]]
        if self.config.use_wrist_image:
            parts.append(patches[b:] + self.wrist_view_embedding)
        if self.config.use_state:
            states = torch.as_tensor(np.asarray(obs.states, dtype=np.float32), device=self.device)
            parts.append(self.state_projector(states)[:, None, :])
        k = self.config.text_patch_size
        text_ids, text_valid = self.text_tokenizer.batch(obs.instructions, device=self.device, multiple_of=k)
        text = self.decoder.embed_tokens(text_ids)
        if self.text_patcher is not None:
            # Left padding aligns groups from the right, so each row is grouped the same in
            # any batch; a group counts as valid if it holds any byte (pads embed to zero).
            text = self.text_patcher(text.reshape(b, -1, k * text.shape[-1]))
            text_valid = text_valid.view(b, -1, k).any(dim=-1)
        parts.append(text)
        prefix = torch.cat(parts, dim=1)
        valid = torch.ones(prefix.shape[:2], dtype=torch.bool, device=self.device)
        valid[:, -text_valid.shape[1]:] = text_valid
        return prefix, valid

    @staticmethod
    def attention_mask(valid: torch.Tensor, num_action_tokens: int) -> torch.Tensor:
        """The 4D boolean mask (B, 1, L, L), True = may attend, for prefix validity ``valid`` (B, P).

        Prefix queries attend causally to valid prefix keys; action queries attend to
        every valid prefix key and every action key. Every query has at least one
        valid key (the first image patch), so no softmax row is empty.
        """
        b, p = valid.shape
        length = p + num_action_tokens
        idx = torch.arange(length, device=valid.device)
        allowed = (idx[None, :] <= idx[:, None]) | (idx[:, None] >= p)
        key_valid = torch.cat([valid, valid.new_ones(b, num_action_tokens)], dim=1)
        return allowed[None, None, :, :] & key_valid[:, None, None, :]

    # ------------------------------------------------------------------ forward

    def forward(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Action logits (B, T, n_bins) and all final hidden states (B, P + T, hidden).

        The last T positions of the hidden states are the action block. This is
        the one code path behind ``act``, ``log_probs`` and ``sft_loss``.
        """
        prefix, valid = self._prefix(obs)
        b = prefix.shape[0]
        actions = self.action_queries.unsqueeze(0).expand(b, -1, -1)
        inputs = torch.cat([prefix, actions.to(prefix.dtype)], dim=1)
        mask = self.attention_mask(valid, self.num_action_tokens)
        key_valid = mask[:, 0, -1, :]  # the last action query sees exactly the valid keys
        # Positions count valid tokens only, so padding never shifts the rotary phases.
        position_ids = (key_valid.long().cumsum(dim=1) - 1).clamp_(min=0)
        # An additive float mask is converted once here instead of once per layer inside SDPA;
        # transformers passes a 4D mask through to attention unchanged.
        additive = torch.zeros(mask.shape, dtype=inputs.dtype, device=inputs.device)
        additive.masked_fill_(~mask, torch.finfo(inputs.dtype).min)
        hidden = self.decoder(
            inputs_embeds=inputs, attention_mask=additive, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        action_hidden = hidden[:, -self.num_action_tokens:]
        if self.bin_blur is None:
            logits = self.action_head(action_hidden)
        else:
            # (h Wᵀ + b) G, with G folded into the head: far cheaper than blurring every row of logits.
            blur = self.bin_blur.to(action_hidden.dtype)
            logits = F.linear(action_hidden, blur.T @ self.action_head.weight, self.action_head.bias @ blur)
        return logits, hidden

    def _values_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B,) values from the final hidden states (B, P + T, hidden): the value head on the
        mean of the action block."""
        pooled = hidden[:, -self.num_action_tokens:].mean(dim=1)
        if self.config.value_detach:
            pooled = pooled.detach()
        return self.value_head(pooled.float()).squeeze(-1)

    def values(self, obs: ObsBatch) -> torch.Tensor:
        """Differentiable (B,) critic values of the observations (PPO with GAE)."""
        _, hidden = self(obs)
        return self._values_from_hidden(hidden)

    def value_parameters(self):
        """The value head's parameters (trained with ``algo.critic.lr``)."""
        return self.value_head.parameters()

    def shard_units(self) -> list[nn.Module]:
        """The decoder's layers and the vision encoder's (``train.strategy=fsdp2`` shards them one by one)."""
        return [*self.decoder.layers, *self.vision.encoder.layers]

    def _bins_to_env_actions(self, bins: torch.Tensor) -> np.ndarray:
        """Bins (B, T) → env-unit actions (B, chunk, action_dim) float32."""
        normalized = self.action_tokenizer.bins_to_actions(bins.cpu(), dtype=torch.float64)
        actions = unnormalize_actions(
            normalized.view(-1, self.chunk_size, self.action_dim), self.config.action_low, self.config.action_high
        )
        return actions.numpy().astype(np.float32)

    # ------------------------------------------------------------------ Policy contract

    @torch.no_grad()
    def act(self, obs: ObsBatch, temperature: float) -> ActionSample:
        """Sample one chunk per observation; ``temperature`` 0 takes the argmax bin.

        Returns actions (B, chunk, action_dim) float32 in env units, ``sample["bins"]``
        (B, T) int64, log-probs (B, T) at ``temperature`` (zeros when greedy), mask all True.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        logits, _ = self(obs)
        if temperature == 0:
            bins = logits.argmax(dim=-1)
            log_probs = torch.zeros(bins.shape, dtype=torch.float32, device=bins.device)
        else:
            logp = torch.log_softmax(logits.float() / temperature, dim=-1)
            bins = sample_categorical(logp.exp())
            log_probs = logp.gather(-1, bins.unsqueeze(-1)).squeeze(-1)
        return ActionSample(
            actions=self._bins_to_env_actions(bins),
            sample={"bins": bins},
            log_probs=log_probs,
            mask=torch.ones(bins.shape, dtype=torch.bool, device=bins.device),
        )

    def log_probs(self, obs: ObsBatch, sample: Mapping[str, torch.Tensor], temperature: float) -> Scores:
        """Differentiable log-probs (B, T) of ``sample["bins"]`` and entropies (B, T), at ``temperature`` > 0."""
        if temperature <= 0:
            raise ValueError(
                f"log_probs needs temperature > 0 (got {temperature}): greedy actions have no sampling distribution"
            )
        if "bins" not in sample:
            raise ValueError(f"sample must hold 'bins' as returned by TinyTokenVLA.act, got keys {sorted(sample)}")
        bins = sample["bins"].to(self.device).long()
        if tuple(bins.shape) != (len(obs), self.num_action_tokens):
            raise ValueError(
                f"sample['bins'] must be (B={len(obs)}, T={self.num_action_tokens}), got {tuple(bins.shape)}"
            )
        logits, hidden = self(obs)
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        return Scores(log_probs=logp.gather(-1, bins.unsqueeze(-1)).squeeze(-1), entropy=categorical_entropy(logp),
                      values=self._values_from_hidden(hidden))

    def expert_bins(self, expert_actions: np.ndarray) -> torch.Tensor:
        """Env-unit chunks (B, chunk, action_dim) → target bins (B, T) int64: normalise with
        the config bounds (clipping to [-1, 1]) and discretise as OpenVLA does."""
        expert = np.asarray(expert_actions, dtype=np.float64)
        if expert.ndim != 3 or expert.shape[1:] != (self.chunk_size, self.action_dim):
            raise ValueError(
                f"expert_actions must be (B, chunk={self.chunk_size}, action_dim={self.action_dim}), got {expert.shape}"
            )
        normalized = normalize_actions(expert, self.config.action_low, self.config.action_high)
        bins = self.action_tokenizer.discretize(normalized).reshape(len(expert), -1)
        return torch.from_numpy(bins).to(self.device)

    def sft_loss(self, obs: ObsBatch, expert_actions: np.ndarray) -> torch.Tensor:
        """Cross-entropy of the expert bins, mean over all B × T elements."""
        targets = self.expert_bins(expert_actions)
        if targets.shape[0] != len(obs):
            raise ValueError(f"expert_actions has {targets.shape[0]} chunks for {len(obs)} observations")
        logits, _ = self(obs)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))

    # ------------------------------------------------------------------ checkpoints

    def save(self, directory: Path) -> None:
        """Write ``model.safetensors`` and ``pushcut_policy.json`` ({"type": "tiny", "config": …})."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        safetensors.torch.save_file(tensors, str(directory / WEIGHTS_FILE))
        config = dataclasses.asdict(self.config)
        config["checkpoint"] = None  # the saved weights are the checkpoint; don't chain to the old one
        meta = {"type": POLICY_TYPE, "config": config}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    def load(self, directory: Path) -> None:
        """Load weights written by :meth:`save` in place; :class:`CheckpointError` on any mismatch."""
        directory = Path(directory)
        meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
        if not directory.is_dir():
            raise CheckpointError(
                f"tiny policy checkpoint {directory} does not exist (expected a directory written by TinyTokenVLA.save)"
            )
        for path in (meta_path, weights_path):
            if not path.is_file():
                found = sorted(p.name for p in directory.iterdir())[:10]
                raise CheckpointError(
                    f"{directory} is not a tiny policy checkpoint: expected {META_FILE} and {WEIGHTS_FILE}, "
                    f"found {found or 'an empty directory'}"
                )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{meta_path} is not valid JSON ({exc}); re-save the checkpoint") from exc
        found_type = meta.get("type") if isinstance(meta, dict) else None
        if found_type != POLICY_TYPE:
            raise CheckpointError(
                f"{directory} holds a {found_type!r} policy checkpoint, expected {POLICY_TYPE!r}; "
                f"set policy.type={found_type!r} to load it, or point at a tiny checkpoint"
            )
        try:
            tensors = safetensors.torch.load_file(str(weights_path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"cannot read {weights_path}: {exc}") from exc

        saved = meta["config"] if isinstance(meta.get("config"), dict) else {}
        own = self.state_dict()
        head = {k for k in own if k.startswith("value_head.")}
        if not head & set(tensors):
            # saved before the policy had a value head: the head keeps its fresh init
            tensors = {**tensors, **{k: own[k] for k in head}}
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        shapes = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs policy {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(tensors)) if tensors[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            problems = []
            if missing:
                problems.append(f"missing keys {short_list(missing)}")
            if unexpected:
                problems.append(f"unexpected keys {short_list(unexpected)}")
            if shapes:
                problems.append(f"shape mismatches {short_list(shapes)}")
            diffs = [f"{k}={saved[k]!r} (policy has {v!r})" for k, v in self.config.architecture().items()
                     if k in saved and _normal(saved[k]) != _normal(v)]
            hint = f"; the checkpoint was saved with {', '.join(diffs)}" if diffs else ""
            raise CheckpointError(
                f"{weights_path} does not fit this tiny policy: {'; '.join(problems)}{hint}. "
                f"Use the config stored in {META_FILE}"
            )
        # The blur changes what the weights mean without changing a shape.
        saved_blur = saved.get("bin_smoothing", 0.0)
        if saved_blur != self.config.bin_smoothing:
            raise CheckpointError(
                f"{directory} was trained with policy.bin_smoothing={saved_blur}, this policy has "
                f"{self.config.bin_smoothing}; set policy.bin_smoothing={saved_blur} to load it"
            )
        self.load_state_dict(tensors, strict=True)


def _gaussian_blur(n_bins: int, std: float) -> torch.Tensor | None:
    """(n_bins, n_bins) matrix whose column j is a unit-sum Gaussian of ``std`` bins around bin j; None for 0."""
    if std == 0:
        return None
    idx = torch.arange(n_bins, dtype=torch.float32)
    weights = torch.exp(-0.5 * ((idx[:, None] - idx[None, :]) / std) ** 2)
    return weights / weights.sum(dim=0, keepdim=True)


def _normal(value: object) -> object:
    """JSON turns tuples into lists; compare them alike."""
    return list(value) if isinstance(value, (tuple, list)) else value
