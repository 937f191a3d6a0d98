"""OpenVLA / OpenVLA-OFT as a pushcut :class:`~pushcut.contracts.Policy`.

**Parallel mode** (OpenVLA-OFT, as SimpleVLA-RL runs it). Per observation the language model sees,
right-padded to the longest row of the batch::

    [BOS][image patches × images][proprio]? [prompt …][0 × T][EOS][pad …]

The T = chunk × action_dim action placeholders have all-zero input embeddings and the EOS ("stop")
token follows them, as at OFT training time. Attention is **fully bidirectional** over the whole
sequence, with pad keys masked: that is what OpenVLA-OFT's transformers fork does (it replaces
Llama's causal mask by the last row of the padded causal mask, so every token sees every non-pad
token) and what its checkpoints were trained with. The logits of action element k are read at
position ``patches + prompt_tokens + k`` (the last prompt token predicts element 0, placeholder
k - 1 predicts element k), restricted to the ``n_action_bins`` ids just below the base vocabulary
size (31744..31999 for Llama-2), divided by the temperature and sampled independently.

**Autoregressive mode** (original OpenVLA): ``[pad …][BOS][patches][prompt …]`` left-padded, causal
attention, action_dim tokens decoded one after another with a KV cache (chunk_size 1).

Token ids decode to bin centres exactly as OpenVLA does (:class:`pushcut.actions.ActionTokenizer`)
and are un-normalised with the checkpoint's ``norm_stats`` (q01/q99 or min/max, with the mask).
``sample["tokens"]`` holds the sampled ids; ``log_probs`` re-scores them with one teacher-forced pass.

**Value head** (PPO's critic, the :class:`pushcut.contracts.ValueHead` capability): a small float32
MLP outside the original model on the pooled final hidden state, detached (the value loss never moves
the VLA): the mean over the T action positions in parallel mode, the last prefix position in
autoregressive mode. It is saved as ``pushcut_value_head.safetensors`` only once it differs from its
seeded initialisation, so an untouched checkpoint still round-trips file for file.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from transformers import DynamicCache, LlamaConfig, LlamaModel

from pushcut.actions import ActionBounds, ActionTokenizer, categorical_entropy, sample_categorical
from pushcut.contracts import NO_WRIST_IMAGE_FIX, ActionSample, ObsBatch, Policy, Scores
from pushcut.errors import CheckpointError, ConfigError
from pushcut.plugins.policies.openvla.checkpoint import (
    TOWER_NAMES,
    RawCheckpoint,
    TowerSpec,
    checkpoint_dtype,
    read_checkpoint,
    split_checkpoint,
    tower_from_hf,
    tower_spec,
    tower_to_hf,
    write_checkpoint,
)
from pushcut.plugins.policies.openvla.config import OpenVLAConfig
from pushcut.plugins.policies.openvla.modeling import PrismaticVLA
from pushcut.plugins.policies.openvla.processing import (
    APPENDED_ID,
    ImageProcessor,
    PromptTokenizer,
    normalize_proprio,
)

log = logging.getLogger(__name__)

LORA_WEIGHTS_FILE = "pushcut_lora.safetensors"
LORA_META_FILE = "pushcut_lora.json"
VALUE_HEAD_FILE = "pushcut_value_head.safetensors"
VALUE_HEAD_WIDTH = 256
VALUE_HEAD_SEED = 0
DATASET_STATISTICS_FILE = "dataset_statistics.json"
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_STATS_KEYS = {"q99": ("q01", "q99"), "minmax": ("min", "max")}
SHARD_UNITS = ("LlamaDecoderLayer", "Dinov2WithRegistersLayer", "Dinov2Layer", "SiglipEncoderLayer")
"""Module classes a sharded learner shards one by one: OpenVLA's repeated blocks."""

# transformers 5.24 renamed LlamaModel.forward's ``past_key_values`` to ``cache`` (the old name goes in 5.40).
_CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


class OpenVLAPolicy(Policy):
    """The ``openvla`` policy. See the module docstring for the two decoding modes."""

    def __init__(self, config: OpenVLAConfig, raw: RawCheckpoint | None = None) -> None:
        """Load ``config.checkpoint``; ``raw`` (tensors already in memory, e.g. random weights for a
        benchmark) replaces reading the weights, the directory still supplies tokenizer and statistics."""
        super().__init__()
        self.config = config
        if raw is None:
            raw = read_checkpoint(config.require_checkpoint())
        self.dtype = _DTYPES.get(config.dtype) or checkpoint_dtype(raw)
        self._read_layout(raw)
        self._choose_stats(raw)
        self.tokenizer = PromptTokenizer(raw.directory)
        # OpenVLA counts action ids back from the *unpadded* vocabulary (32064 - 64 = 32000 for Llama-2).
        self.base_vocab_size = self._llm_config.vocab_size - int(raw.config.get("pad_to_multiple_of", 0))
        n_bins = int(raw.config.get("n_action_bins", 256))
        self._check_vocabulary(raw, n_bins)
        self.action_tokenizer = ActionTokenizer(vocab_size=self.base_vocab_size, n_bins=n_bins)
        if self.tokenizer.vocab_size != self.base_vocab_size:
            log.warning("tokenizer has %d pieces but the checkpoint's base vocabulary is %d",
                        self.tokenizer.vocab_size, self.base_vocab_size)
        fused = len(self._specs) > 1
        resize = str(raw.config.get("image_resize_strategy", "resize-naive"))
        self.image_processor = ImageProcessor.from_checkpoint(
            raw.directory, [s.kind for s in self._specs], [s.image_size for s in self._specs],
            resize, config.center_crop,
        )
        if not fused and self.config.num_images > 1:
            raise ConfigError("policy.num_images > 1 needs the fused (DINOv2 + SigLIP) vision backbone")

        self.model = self._build_model(raw)
        self._raw = raw
        raw.tensors = {}  # the weights live in the model now; keep only names, dtypes and files
        self._lora = False
        if config.lora_rank:
            self._add_lora()
        if config.freeze_vision:
            for p in self.model.vision_backbone.parameters():
                p.requires_grad_(False)
        if config.gradient_checkpointing:
            for module in (self.model.language_model, *(t.model for t in self.model.vision_backbone)):
                if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5.x name
                    module.activation_checkpointing_enable({"use_reentrant": False})
                else:
                    module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if (Path(config.checkpoint) / LORA_WEIGHTS_FILE).is_file():
            self._load_lora(Path(config.checkpoint))
        with torch.random.fork_rng(devices=[]):  # seeded, and the caller's random stream untouched
            torch.manual_seed(VALUE_HEAD_SEED)
            width = self._llm_config.hidden_size
            self.value_head = torch.nn.Sequential(torch.nn.Linear(width, VALUE_HEAD_WIDTH), torch.nn.Tanh(),
                                                  torch.nn.Linear(VALUE_HEAD_WIDTH, 1))
        # frozen unless a run trains a critic (the engine turns its gradients on): a GRPO or SFT run's
        # trainable parameters stay exactly the VLA's (or its LoRA adapters)
        self.value_head.requires_grad_(False)
        self._value_head_init = {k: v.detach().clone() for k, v in self.value_head.state_dict().items()}
        if (Path(config.checkpoint) / VALUE_HEAD_FILE).is_file():
            self._load_value_head(Path(config.checkpoint))

    # ------------------------------------------------------------------ building

    def _read_layout(self, raw: RawCheckpoint) -> None:
        """Tower specs, LLM config and proprio size from config.json and the tensor shapes."""
        cfg = raw.config
        fused = cfg.get("use_fused_vision_backbone")
        if fused is None:
            fused = str(cfg.get("vision_backbone_id", "")).startswith(("dinosiglip", "dinoclip")) or any(
                k.startswith("vision_backbone.fused_featurizer.") for k in raw.tensors)
        split = split_checkpoint(raw, bool(fused))
        n = len(split.towers)
        timm_ids = list(cfg.get("timm_model_ids") or [""] * n)
        sizes = list(cfg.get("image_sizes") or [224] * n)
        if len(timm_ids) < n or len(sizes) < n:
            raise CheckpointError(f"{raw.directory}/config.json: timm_model_ids and image_sizes need {n} entries")
        heads = self.config.vision_heads
        if heads is not None and len(heads) != n:
            raise ConfigError(
                f"policy.vision_heads has {len(heads)} entries but {raw.directory} has {n} vision tower(s) "
                f"({', '.join(map(str, timm_ids[:n]))}); give one head count per tower"
            )
        acts = list(cfg.get("timm_override_act_layers") or [None] * n)
        self._specs: list[TowerSpec] = [
            tower_spec(t, str(timm_ids[i]), int(sizes[i]), f"{raw.directory}: vision_backbone.{TOWER_NAMES[i]}",
                       heads=None if heads is None else heads[i], act=acts[i] if i < len(acts) else None)
            for i, t in enumerate(split.towers)
        ]
        self._llm_config = _llama_config(cfg.get("text_config") or {}, split.language_model, raw.directory)
        attn = self.config.attn_implementation
        if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("policy.attn_implementation=flash_attention_2 needs the flash-attn package; use sdpa")
        self._llm_config._attn_implementation = "sdpa" if attn == "auto" else attn
        proprio_dim = int(split.proprio["fc1.weight"].shape[1]) if split.proprio else 0
        if self.config.use_proprio and not proprio_dim:
            raise CheckpointError(
                f"policy.use_proprio is set but {raw.directory} has no proprio projector "
                "(proprio_projector.* weights or a proprio_projector--*checkpoint.pt file)"
            )
        self.use_proprio = bool(proprio_dim) and self.config.use_proprio is not False
        self.proprio_dim = proprio_dim if self.use_proprio else 0
        self._split = split

    def _check_vocabulary(self, raw: RawCheckpoint, n_bins: int) -> None:
        """The action ids (the n_bins ids below the base vocabulary) and the appended prompt id must
        be rows of the language model's embedding."""
        rows = self._llm_config.vocab_size
        where = f"{raw.directory}/config.json"
        if not 0 < n_bins < self.base_vocab_size <= rows:
            raise CheckpointError(
                f"{where}: the vocabulary has no action-id range: {n_bins} action bins (n_action_bins) below a base "
                f"vocabulary of {self.base_vocab_size} (embedding rows {rows} - pad_to_multiple_of "
                f"{raw.config.get('pad_to_multiple_of', 0)}); fix n_action_bins or pad_to_multiple_of"
            )
        if APPENDED_ID >= rows:
            raise CheckpointError(
                f"{where}: OpenVLA appends token id {APPENDED_ID} to every prompt, but the language model has only "
                f"{rows} embedding rows; this is not a Llama-2-sized OpenVLA vocabulary"
            )

    def _choose_stats(self, raw: RawCheckpoint) -> None:
        """Pick the norm_stats entry (dataset_statistics.json wins over config.json, as in OFT)."""
        stats_path = raw.directory / DATASET_STATISTICS_FILE
        norm_stats = json.loads(stats_path.read_text()) if stats_path.is_file() else raw.config.get("norm_stats")
        if not norm_stats:
            raise CheckpointError(
                f"{raw.directory} has no norm_stats (in config.json or {DATASET_STATISTICS_FILE}): "
                "un-normalising actions needs the dataset statistics the checkpoint was trained with"
            )
        key = self.config.unnorm_key
        if key is None:
            if len(norm_stats) != 1:
                raise ConfigError(
                    f"the checkpoint has norm_stats for {len(norm_stats)} datasets; choose one with "
                    f"policy.unnorm_key (or --unnorm-key): {', '.join(sorted(norm_stats))}"
                )
            key = next(iter(norm_stats))
        elif key not in norm_stats and f"{key}_no_noops" in norm_stats:
            key = f"{key}_no_noops"  # SimpleVLA-RL's LIBERO suites are stored under *_no_noops
        if key not in norm_stats:
            raise ConfigError(
                f"policy.unnorm_key={key!r} is not in the checkpoint's norm_stats; available: "
                f"{', '.join(sorted(norm_stats))}"
            )
        self.unnorm_key = key
        entry = norm_stats[key]
        action_stats = entry.get("action", {})
        lo_key, hi_key = _STATS_KEYS[self.config.normalization]
        if lo_key not in action_stats or hi_key not in action_stats:
            raise CheckpointError(
                f"norm_stats[{key!r}]['action'] has no {lo_key}/{hi_key} for policy.normalization="
                f"{self.config.normalization!r}; it has {sorted(action_stats)}"
            )
        self.bounds = ActionBounds.from_stats(action_stats, kind=self.config.normalization)
        dim = self.bounds.action_dim
        if self.config.action_dim is not None and self.config.action_dim != dim:
            raise ConfigError(
                f"policy.action_dim={self.config.action_dim} but the checkpoint's norm_stats[{key!r}] describe "
                f"{dim}-dimensional actions; set policy.action_dim={dim} (or leave it unset)"
            )
        self.action_dim = dim
        self.chunk_size = self.config.chunk_size
        self.num_action_tokens = self.chunk_size * self.action_dim
        self.proprio_bounds = None
        proprio_stats = entry.get("proprio")
        if proprio_stats and lo_key in proprio_stats and hi_key in proprio_stats:
            self.proprio_bounds = ActionBounds.from_stats(proprio_stats, kind=self.config.normalization)

    def _build_model(self, raw: RawCheckpoint) -> PrismaticVLA:
        """Build on the meta device and adopt the converted checkpoint tensors (no random init,
        no second copy of a 7B model)."""
        with torch.device("meta"):
            model = PrismaticVLA(self._specs, self._llm_config, self.proprio_dim)
        state, self._carried = self._to_model_state(self._split)
        if not self.use_proprio:
            self._unused_proprio = {k: v for k, v in state.items() if k.startswith("proprio_projector.")}
            state = {k: v for k, v in state.items() if not k.startswith("proprio_projector.")}
        else:
            self._unused_proprio = {}
        state = {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in state.items()}
        _load_strict(model, state, raw.directory, assign=True)
        _materialize_buffers(model)
        del self._split
        return model

    def _to_model_state(self, split) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
        state: dict[str, torch.Tensor] = {}
        carried = []
        for i, (tensors, spec) in enumerate(zip(split.towers, self._specs)):
            hf, extra = tower_to_hf(tensors, spec, f"vision_backbone.{TOWER_NAMES[i]}")
            state.update({f"vision_backbone.{i}.model.{k}": v for k, v in hf.items()})
            carried.append(extra)
        state.update({f"projector.{k}": v for k, v in split.projector.items()})
        state.update({f"proprio_projector.{k}": v for k, v in split.proprio.items()})
        state.update({f"language_model.{k}": v for k, v in split.language_model.items()})
        return state, carried

    def _add_lora(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        c = self.config
        lora = LoraConfig(r=c.lora_rank, lora_alpha=c.lora_alpha if c.lora_alpha is not None else 2 * c.lora_rank,
                          lora_dropout=c.lora_dropout, target_modules=list(c.lora_targets), bias="none")
        try:
            inject_adapter_in_model(lora, self.model.language_model)
        except ValueError as exc:
            raise ConfigError(
                f"policy.lora_targets={list(c.lora_targets)} match no language-model layer: {exc}"
            ) from None
        for name, p in self.model.named_parameters():
            p.requires_grad_("lora_" in name)
        # Adapters stay float32 (peft's default; peft puts them on their base layer's device).
        self._lora = True

    # ------------------------------------------------------------------ inputs

    def _check_obs(self, obs: ObsBatch) -> None:
        if self.config.num_images > 1 and obs.wrist_images is None:
            raise ConfigError(f"policy.num_images=2 but the observations have no wrist_image; {NO_WRIST_IMAGE_FIX}, "
                              "or set policy.num_images=1")
        if self.use_proprio:
            if obs.states is None:
                raise ConfigError(
                    "the checkpoint has a proprio projector but the observations have no state; "
                    "set policy.use_proprio=false or use an env that reports one"
                )
            if obs.states.shape[-1] != self.proprio_dim:
                raise ConfigError(
                    f"the env reports {obs.states.shape[-1]}-dimensional states but the checkpoint's proprio projector "
                    f"takes {self.proprio_dim}; use the matching env/robot or policy.use_proprio=false"
                )

    def _vision_tokens(self, obs: ObsBatch) -> torch.Tensor:
        """Projected image tokens (+ the proprio token): (B, NV, D)."""
        self._check_obs(obs)
        views = [obs.images] + ([obs.wrist_images] if self.config.num_images > 1 else [])
        pixels = torch.cat([self.image_processor(np.asarray(v)) for v in views], dim=1)
        tokens = self.model.image_tokens(pixels.to(self.device, self.dtype))
        if self.use_proprio:
            states = np.asarray(obs.states, dtype=np.float64)
            if self.proprio_bounds is not None:
                b = self.proprio_bounds
                states = normalize_proprio(states, b.low, b.high, b.mask)
            proprio = torch.as_tensor(states, device=self.device, dtype=self.dtype)
            tokens = torch.cat([tokens, self.model.proprio_projector(proprio)[:, None]], dim=1)
        return tokens

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.language_model.get_input_embeddings()(ids)

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)

    # ------------------------------------------------------------------ forward passes

    def _parallel_hidden(self, obs: ObsBatch) -> torch.Tensor:
        """Final hidden states that predict the T action elements, (B, T, D) — one forward pass."""
        vision = self._vision_tokens(obs)
        b, nv = vision.shape[:2]
        t = self.num_action_tokens
        prompts = [self.tokenizer.prompt_ids(s)[1:] for s in obs.instructions]  # BOS goes in front of the patches
        width = max(len(p) for p in prompts) + t + 1
        ids = torch.full((b, width), self.tokenizer.eos_id, dtype=torch.long)
        text_valid = torch.zeros(b, width, dtype=torch.bool)
        placeholder = torch.zeros(b, width, dtype=torch.bool)
        for r, p in enumerate(prompts):
            ids[r, : len(p)] = torch.tensor(p)
            placeholder[r, len(p): len(p) + t] = True
            text_valid[r, : len(p) + t + 1] = True  # prompt, placeholders, EOS
        ids, text_valid, placeholder = (x.to(self.device) for x in (ids, text_valid, placeholder))
        text = self._embed(ids).masked_fill(placeholder[..., None], 0.0)
        bos = self._embed(torch.full((b, 1), self.tokenizer.bos_id, device=self.device))
        inputs = torch.cat([bos, vision, text], dim=1)
        key_valid = torch.cat([torch.ones(b, 1 + nv, dtype=torch.bool, device=self.device), text_valid], dim=1)
        length = inputs.shape[1]
        mask = self._additive(key_valid[:, None, None, :]).expand(b, 1, length, length)
        positions = torch.arange(length, device=self.device).expand(b, -1)
        hidden = self.model.language_model.model(
            inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=False
        ).last_hidden_state
        start = torch.tensor([nv + len(p) for p in prompts], device=self.device)
        index = start[:, None] + torch.arange(t, device=self.device)
        return hidden[torch.arange(b, device=self.device)[:, None], index]

    def _ar_prefix(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``[BOS][patches][prompt]`` embeddings (B, P, D) and their validity (B, P)."""
        vision = self._vision_tokens(obs)
        b, nv = vision.shape[:2]
        prompts = [self.tokenizer.prompt_ids(s)[1:] for s in obs.instructions]
        width = max(len(p) for p in prompts)
        ids = torch.full((b, width), self.tokenizer.eos_id, dtype=torch.long)
        valid = torch.zeros(b, width, dtype=torch.bool)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(p)
            valid[r, width - len(p):] = True
        ids, valid = ids.to(self.device), valid.to(self.device)
        # Row layout [pad …][BOS][patches][prompt]: the BOS and patches move right with the padding.
        pad = (~valid).sum(dim=1)
        bos = self._embed(torch.full((b, 1), self.tokenizer.bos_id, device=self.device))
        body = torch.cat([bos, vision, self._embed(ids)], dim=1)
        body_valid = torch.cat([torch.ones(b, 1 + nv, dtype=torch.bool, device=self.device), valid], dim=1)
        # Move each row's pad block (right after the patches) to the front: [pad …][BOS][patches][prompt].
        j = torch.arange(body.shape[1], device=self.device)[None, :]
        head = 1 + nv
        gather = torch.where(j < pad[:, None], head + j, torch.where(j < pad[:, None] + head, j - pad[:, None], j))
        rows = torch.arange(b, device=self.device)[:, None]
        return body[rows, gather], body_valid[rows, gather]

    def _ar_forward(self, inputs: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor,
                    cache: DynamicCache | None) -> torch.Tensor:
        out = self.model.language_model.model(
            inputs_embeds=inputs, attention_mask=valid.long(), position_ids=positions,
            use_cache=cache is not None, **{_CACHE_ARGUMENT: cache},
        )
        return out.last_hidden_state

    def _ar_teacher_forced_hidden(self, obs: ObsBatch, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states predicting each of the action_dim tokens given the earlier ones (B, T, D)."""
        prefix, valid = self._ar_prefix(obs)
        b, p = valid.shape
        t = tokens.shape[1]
        inputs = torch.cat([prefix, self._embed(tokens[:, :-1])], dim=1)
        valid = torch.cat([valid, torch.ones(b, t - 1, dtype=torch.bool, device=self.device)], dim=1)
        positions = (valid.long().cumsum(dim=1) - 1).clamp_(min=0)
        hidden = self._ar_forward(inputs, valid, positions, None)
        return hidden[:, p - 1:]

    # ------------------------------------------------------------------ logits and sampling

    def _logits(self, hidden: torch.Tensor, full_vocab: bool = False) -> torch.Tensor:
        """Float32 logits (…, K): over the n_action_bins action ids (restricted) or the whole vocabulary."""
        if self.config.restrict_to_action_tokens and not full_vocab:
            return self._action_id_logits(hidden)
        return F.linear(hidden, self.model.language_model.get_output_embeddings().weight).float()

    def _index_to_token(self, index: torch.Tensor) -> torch.Tensor:
        return index + self.action_tokenizer.first_token_id if self.config.restrict_to_action_tokens else index

    def _token_to_index(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.config.restrict_to_action_tokens:
            return tokens
        index = tokens - self.action_tokenizer.first_token_id
        if bool(((index < 0) | (index >= self.action_tokenizer.n_bins)).any()):
            raise ValueError(
                f"sample['tokens'] holds ids outside the action range "
                f"{self.action_tokenizer.first_token_id}..{self.action_tokenizer.last_token_id}"
            )
        return index

    @staticmethod
    def _draw(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(index, log-prob) per row of ``logits`` (..., K); argmax and zeros when temperature is 0."""
        if temperature == 0:
            index = logits.argmax(dim=-1)
            return index, torch.zeros(index.shape, dtype=torch.float32, device=index.device)
        logp = torch.log_softmax(logits / temperature, dim=-1)
        index = sample_categorical(logp.exp())
        return index, logp.gather(-1, index[..., None]).squeeze(-1)

    def tokens_to_actions(self, tokens: torch.Tensor) -> np.ndarray:
        """Action token ids (B, T) → env-unit actions (B, chunk, action_dim) float32."""
        normalized = self.action_tokenizer.decode(tokens.cpu().numpy())  # float64 bin centres, as OpenVLA
        # OFT's un-normalisation adds 1e-8 to the range; the original OpenVLA does not.
        eps = 1e-8 if self.config.mode == "parallel" else 0.0
        actions = self.bounds.unnormalize(normalized.reshape(len(tokens), self.chunk_size, self.action_dim), eps=eps)
        return actions.astype(np.float32)

    # ------------------------------------------------------------------ Policy contract

    @torch.no_grad()
    def act(self, obs: ObsBatch, temperature: float) -> ActionSample:
        """One chunk per observation: ``sample["tokens"]`` (B, T) action token ids, their log-probs at
        ``temperature`` (zeros when greedy), actions (B, chunk, action_dim) in env units."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if self.config.mode == "parallel":
            index, log_probs = self._draw(self._logits(self._parallel_hidden(obs)), temperature)
            tokens = self._index_to_token(index)
        else:
            tokens, log_probs = self._generate(obs, temperature)
        return ActionSample(
            actions=self.tokens_to_actions(tokens),
            sample={"tokens": tokens},
            log_probs=log_probs,
            mask=torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device),
        )

    def _generate(self, obs: ObsBatch, temperature: float, logits_out: list | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Autoregressive decoding of action_dim tokens with a KV cache (each step's logits are
        appended to ``logits_out`` when given)."""
        prefix, valid = self._ar_prefix(obs)
        positions = (valid.long().cumsum(dim=1) - 1).clamp_(min=0)
        cache = DynamicCache()
        hidden = self._ar_forward(prefix, valid, positions, cache)[:, -1]
        tokens, log_probs = [], []
        for step in range(self.num_action_tokens):
            logits = self._logits(hidden)
            if logits_out is not None:
                logits_out.append(logits)
            index, lp = self._draw(logits, temperature)
            token = self._index_to_token(index)
            tokens.append(token)
            log_probs.append(lp)
            if step + 1 < self.num_action_tokens:
                valid = torch.cat([valid, valid.new_ones(valid.shape[0], 1)], dim=1)
                positions = positions[:, -1:] + 1
                hidden = self._ar_forward(self._embed(token[:, None]), valid, positions, cache)[:, -1]
        return torch.stack(tokens, dim=1), torch.stack(log_probs, dim=1)

    # ------------------------------------------------------------------ inspection

    @torch.no_grad()
    def action_logits(self, obs: ObsBatch, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Raw float32 logits of the T action elements over the ``n_action_bins`` action ids
        (column j is id ``first_token_id + j``, i.e. 31744 + j for Llama-2), before any temperature:
        (B, T, n_bins). For checking a checkpoint against the original code.

        Parallel mode: the one forward pass's logits (``tokens`` is ignored). Autoregressive mode:
        the logits of each decoding step, teacher-forced on ``tokens`` (B, T) when given (one causal
        pass, no cache), else of greedy decoding with the KV cache, step by step as ``act`` does."""
        if self.config.mode == "parallel":
            return self._action_id_logits(self._parallel_hidden(obs))
        if tokens is not None:
            tokens = torch.as_tensor(tokens, device=self.device).long()
            if tuple(tokens.shape) != (len(obs), self.num_action_tokens):
                raise ValueError(f"tokens must be (B={len(obs)}, T={self.num_action_tokens}), got {tuple(tokens.shape)}")
            return self._action_id_logits(self._ar_teacher_forced_hidden(obs, tokens))
        steps: list[torch.Tensor] = []
        restricted = self.config.restrict_to_action_tokens
        self._generate(obs, 0.0, steps)
        logits = torch.stack(steps, dim=1)
        if not restricted:  # steps hold the whole vocabulary: keep the action ids' columns
            first = self.action_tokenizer.first_token_id
            logits = logits[..., first: first + self.action_tokenizer.n_bins]
        return logits

    def _action_id_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.language_model.get_output_embeddings().weight
        first = self.action_tokenizer.first_token_id
        return F.linear(hidden, weight[first: first + self.action_tokenizer.n_bins]).float()

    @torch.no_grad()
    def vision_features(self, obs: ObsBatch) -> list[torch.Tensor]:
        """Each vision tower's patch features for ``obs.images``, before the projector: a list (one per
        tower, DINOv2 first) of (B, patches, width) tensors — what OpenVLA's timm featurizer returns
        (``get_intermediate_layers(n={blocks - 2})``: the second-to-last block's output, no final norm,
        no prefix tokens). For checking a checkpoint's towers against timm."""
        pixels = self.image_processor(np.asarray(obs.images)).to(self.device, self.dtype)
        chunks = torch.split(pixels, 3, dim=1)
        return [tower(chunk).float() for tower, chunk in zip(self.model.vision_backbone, chunks)]

    def _action_hidden(self, obs: ObsBatch, tokens: torch.Tensor) -> torch.Tensor:
        if self.config.mode == "parallel":
            return self._parallel_hidden(obs)
        return self._ar_teacher_forced_hidden(obs, tokens)

    def _values_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B,) values from the (B, T, D) action hidden states: pooled (mean in parallel mode, the last
        prefix position in autoregressive mode), detached, through the value head in float32."""
        pooled = hidden.mean(dim=1) if self.config.mode == "parallel" else hidden[:, 0]
        return self.value_head(pooled.detach().float()).squeeze(-1)

    def values(self, obs: ObsBatch) -> torch.Tensor:
        """Differentiable (in the head) (B,) critic values of the observations (PPO with GAE)."""
        if self.config.mode == "parallel":
            return self._values_from_hidden(self._parallel_hidden(obs))
        prefix, valid = self._ar_prefix(obs)
        positions = (valid.long().cumsum(dim=1) - 1).clamp_(min=0)
        return self._values_from_hidden(self._ar_forward(prefix, valid, positions, None)[:, -1:])

    def shard_units(self) -> list[torch.nn.Module]:
        """The Llama decoder layers and the vision towers' transformer layers (``train.strategy=fsdp2``)."""
        return [m for m in self.modules() if type(m).__name__ in SHARD_UNITS]

    def value_parameters(self):
        """The value head's parameters (trained with ``algo.critic.lr``)."""
        return self.value_head.parameters()

    def log_probs(self, obs: ObsBatch, sample: Mapping[str, torch.Tensor], temperature: float) -> Scores:
        """Differentiable (B, T) log-probs (and entropies) of ``sample["tokens"]`` at ``temperature`` > 0,
        and the (B,) values from the same pass."""
        if temperature <= 0:
            raise ValueError(f"log_probs needs temperature > 0 (got {temperature}): greedy has no distribution")
        if "tokens" not in sample:
            raise ValueError(f"sample must hold 'tokens' as returned by act(), got keys {sorted(sample)}")
        tokens = sample["tokens"].to(self.device).long()
        if tuple(tokens.shape) != (len(obs), self.num_action_tokens):
            raise ValueError(f"sample['tokens'] must be (B={len(obs)}, T={self.num_action_tokens}), "
                             f"got {tuple(tokens.shape)}")
        index = self._token_to_index(tokens)
        hidden = self._action_hidden(obs, tokens)
        logp = torch.log_softmax(self._logits(hidden) / temperature, dim=-1)
        return Scores(log_probs=logp.gather(-1, index[..., None]).squeeze(-1), entropy=categorical_entropy(logp),
                      values=self._values_from_hidden(hidden))

    def expert_tokens(self, expert_actions: np.ndarray) -> torch.Tensor:
        """Env-unit chunks (B, chunk, action_dim) → target token ids (B, T), as OpenVLA's data pipeline
        normalises and discretises them."""
        expert = np.asarray(expert_actions, dtype=np.float64)
        if expert.ndim != 3 or expert.shape[1:] != (self.chunk_size, self.action_dim):
            raise ValueError(
                f"expert actions have shape {expert.shape[1:]} per sample but the policy predicts chunks of "
                f"(chunk={self.chunk_size}, action_dim={self.action_dim})"
            )
        tokens = self.action_tokenizer.encode(self.bounds.normalize(expert)).reshape(len(expert), -1)
        return torch.from_numpy(tokens).to(self.device)

    def sft_loss(self, obs: ObsBatch, expert_actions: np.ndarray) -> torch.Tensor:
        """Cross-entropy of the expert action tokens over the whole vocabulary (OpenVLA / OFT training)."""
        targets = self.expert_tokens(expert_actions)
        if targets.shape[0] != len(obs):
            raise ValueError(f"expert_actions has {targets.shape[0]} chunks for {len(obs)} observations")
        logits = self._logits(self._action_hidden(obs, targets), full_vocab=True)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    # ------------------------------------------------------------------ checkpoints

    def original_state_dict(self, merge_lora: bool = False) -> dict[str, torch.Tensor]:
        """The weights under the checkpoint's own names and dtypes (the inverse of loading)."""
        state = {k: v.detach() for k, v in self.model.state_dict().items()}
        if self._lora:
            deltas = _lora_deltas(self.model) if merge_lora else {}
            state = {k.replace(".base_layer.", "."): v for k, v in state.items() if "lora_" not in k}
            for key, delta in deltas.items():
                state[key] = (state[key].float() + delta.float()).to(state[key].dtype)
        out: dict[str, torch.Tensor] = {}
        for i, spec in enumerate(self._specs):
            prefix = f"vision_backbone.{i}.model."
            local = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            for k, v in tower_from_hf(local, spec, self._carried[i]).items():
                out[f"vision_backbone.{TOWER_NAMES[i]}.{k}"] = v
        for k, v in state.items():
            if not k.startswith("vision_backbone."):
                out[k] = v
        out.update(self._unused_proprio)
        dtypes = self._raw.dtypes
        return {k: v.to(dtypes.get(k, v.dtype)).cpu() for k, v in out.items()}

    def describe(self) -> dict[str, Any]:
        """The dataset key whose statistics un-normalise the actions, and the decoding mode."""
        return {name: value for name, value in (("unnorm_key", self.unnorm_key), ("mode", self.config.mode))
                if value is not None}

    def save(self, directory: Path) -> None:
        """Write the checkpoint in its original layout (same names, dtypes and shard files; tokenizer
        and other files copied). With LoRA: base weights plus ``pushcut_lora.safetensors``, or merged
        weights when ``save_merged`` is set."""
        directory = Path(directory)
        merged = self._lora and self.config.save_merged
        write_checkpoint(self._raw, directory, self.original_state_dict(merge_lora=merged))
        for name in (LORA_WEIGHTS_FILE, LORA_META_FILE, VALUE_HEAD_FILE):
            (directory / name).unlink(missing_ok=True)
        head = {k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()}
        if any(not torch.equal(v, self._value_head_init[k].cpu()) for k, v in head.items()):
            safetensors.torch.save_file(head, str(directory / VALUE_HEAD_FILE))
        if self._lora and not merged:
            lora = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items() if "lora_" in k}
            safetensors.torch.save_file(lora, str(directory / LORA_WEIGHTS_FILE))
            meta = {k: getattr(self.config, k) for k in ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets")}
            (directory / LORA_META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    def load(self, directory: Path) -> None:
        """Load a checkpoint of the same architecture in place (original layout, or written by save)."""
        raw = read_checkpoint(directory)
        current = self._specs
        specs_before, llm_before, proprio_before = self._specs, self._llm_config, self.proprio_dim
        try:
            self._read_layout(raw)
            problems = []
            if self._specs != current:
                problems.append(f"vision towers {_describe(self._specs)} vs policy {_describe(current)}")
            new_llm = self._llm_config
            for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size", "num_key_value_heads"):
                if getattr(new_llm, key) != getattr(llm_before, key):
                    problems.append(
                        f"language model {key} {getattr(new_llm, key)} vs policy {getattr(llm_before, key)}"
                    )
            if self.proprio_dim != proprio_before:
                problems.append(f"proprio_dim {self.proprio_dim} vs policy {proprio_before}")
            if problems:
                raise CheckpointError(f"{directory} does not fit this policy: {'; '.join(problems)}")
            state, carried = self._to_model_state(self._split)
        finally:
            self._specs, self._llm_config, self.proprio_dim = specs_before, llm_before, proprio_before
            self.__dict__.pop("_split", None)
        unused = {k: v for k, v in state.items() if k.startswith("proprio_projector.") and not self.use_proprio}
        state = {k: v for k, v in state.items() if k not in unused}
        own = self.model.state_dict()
        if self._lora:  # base weights live under .base_layer once adapters are injected
            renamed = {k.replace(".base_layer.", "."): k for k in own if "lora_" not in k}
            state = {renamed.get(k, k): v for k, v in state.items()}
        with torch.no_grad():
            _load_strict(self.model, state, raw.directory, assign=False, allow_missing_lora=self._lora)
        self._carried, self._unused_proprio = carried, unused
        raw.tensors = {}
        self._raw = raw
        if (Path(directory) / LORA_WEIGHTS_FILE).is_file():
            self._load_lora(Path(directory))
        if (Path(directory) / VALUE_HEAD_FILE).is_file():
            self._load_value_head(Path(directory))
        else:  # a checkpoint without a trained head: the head is its seeded initialisation
            self.value_head.load_state_dict(self._value_head_init)

    def _load_value_head(self, directory: Path) -> None:
        path = directory / VALUE_HEAD_FILE
        try:
            head = safetensors.torch.load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
        own = self.value_head.state_dict()
        if set(head) != set(own) or any(head[k].shape != own[k].shape for k in own):
            raise CheckpointError(
                f"{path} does not fit this policy's value head (language-model width "
                f"{self._llm_config.hidden_size}): found {sorted((k, tuple(v.shape)) for k, v in head.items())}")
        self.value_head.load_state_dict(head)

    def _load_lora(self, directory: Path) -> None:
        if not self._lora:
            raise CheckpointError(
                f"{directory} holds LoRA adapters ({LORA_WEIGHTS_FILE}) but policy.lora_rank is 0; set "
                f"policy.lora_rank to the rank in {LORA_META_FILE}"
            )
        adapters = safetensors.torch.load_file(str(directory / LORA_WEIGHTS_FILE))
        own = {k for k in self.model.state_dict() if "lora_" in k}
        if set(adapters) != own:
            missing, unexpected = sorted(own - set(adapters))[:4], sorted(set(adapters) - own)[:4]
            raise CheckpointError(
                f"{directory / LORA_WEIGHTS_FILE} does not fit this policy's LoRA layers (rank/targets differ? see "
                f"{LORA_META_FILE}): missing {missing}, unexpected {unexpected}"
            )
        self.model.load_state_dict(adapters, strict=False)


# --------------------------------------------------------------------------- helpers


def _llama_config(text_config: Mapping, tensors: Mapping[str, torch.Tensor], where: Path) -> LlamaConfig:
    """The LlamaConfig of ``text_config`` with the sizes the tensors actually have."""
    embed = tensors.get("model.embed_tokens.weight")
    if embed is None:
        raise CheckpointError(f"{where}: missing key 'language_model.model.embed_tokens.weight'")
    ignore = {"architectures", "_name_or_path", "torch_dtype", "dtype", "transformers_version", "auto_map"}
    kwargs = {k: v for k, v in text_config.items() if k not in ignore}
    layers = {int(k.split(".")[2]) for k in tensors if k.startswith("model.layers.")}
    kwargs.update(vocab_size=int(embed.shape[0]), hidden_size=int(embed.shape[1]), num_hidden_layers=len(layers))
    gate = tensors.get("model.layers.0.mlp.gate_proj.weight")
    if gate is not None:
        kwargs["intermediate_size"] = int(gate.shape[0])
    config = LlamaConfig(**kwargs)
    config.use_cache = False
    k_proj = tensors.get("model.layers.0.self_attn.k_proj.weight")
    if k_proj is not None:
        head_dim = config.hidden_size // config.num_attention_heads
        config.num_key_value_heads = int(k_proj.shape[0]) // head_dim
    return config


def _load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: Path, assign: bool,
                 allow_missing_lora: bool = False) -> None:
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not (allow_missing_lora and "lora_" in k))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{name} {items[:6]}" for name, items in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
        raise CheckpointError(
            f"{where} does not fit the OpenVLA architecture built from its config: {'; '.join(parts)}"
        )
    model.load_state_dict(state, strict=not allow_missing_lora, assign=assign)


def _materialize_buffers(model: torch.nn.Module) -> None:
    """Recreate the non-persistent buffers a meta-device build left empty (rotary frequencies,
    SigLIP position ids)."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is None or buf.device.type != "meta":
                continue
            if name == "position_ids":
                module.register_buffer(name, torch.arange(buf.shape[-1]).expand(1, -1), persistent=False)
            elif name in ("inv_freq", "original_inv_freq"):
                with torch.device("cpu"):
                    fresh = type(module)(config=module.config)
                for n, b in fresh.named_buffers(recurse=False):
                    module.register_buffer(n, b, persistent=False)
            else:
                raise RuntimeError(f"cannot materialise buffer {name!r} of {type(module).__name__}")


def _lora_deltas(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Merged-weight deltas of every LoRA layer, keyed by the base weight's name (without .base_layer)."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                deltas[f"{name}.weight"] = module.get_delta_weight(adapter)
    return deltas


def _describe(specs: list[TowerSpec]) -> str:
    return ", ".join(f"{s.kind}(width {s.hidden_size}, {s.layers} blocks, {s.image_size}px)" for s in specs)

