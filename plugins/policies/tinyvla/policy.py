"""TinyVLAPolicy: a LLaVA-Pythia-style VLM whose pooled hidden state conditions a diffusion head,
scored for RL step by step, with one peft LoRA adapter (and head) per task.

Forward pass, per observation::

    image ─ vision tower ─ projector ─┐
                                      ├─ GPTNeoX (+ the row's task adapter) ─ masked mean pool ─┐
    instruction bytes ─ embedding ────┘                                                         ├─ cond
    proprio state (optional) ───────────────────────────────────────────────────────────────────┘
    cond, x_t, t ─ denoiser (the task's head) ─ ε̂

Sampling (``act``) runs ``inference_steps`` DDIM steps from x_N ~ N(0, I); every step is a
Gaussian x_p ~ N(μ(x_t, t, cond), s²) with s = temperature × max(σ_DDIM(η), min_std), so each
sampled step has a log-density. The chain x_N … x_0 is returned in ``sample["chain"]`` and
the log-densities of the last K steps, elementwise, are the (B, T) log-probs,
T = K × chunk_size × action_dim. ``log_probs`` recomputes μ and s for those K steps from the
stored chain under the current weights. Temperature 0 is deterministic DDIM (η = 0).
See docs/tinyvla.md for the formulas and why T is elementwise.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import peft
import safetensors.torch
import torch
from torch import nn

from pushcut.actions import normalize_actions, unnormalize_actions
from pushcut.contracts import ActionSample, ObsBatch, Policy, Scores
from pushcut.errors import CheckpointError, ConfigError, short_list
from pushcut.plugins.policies.tinyvla.config import TinyVLAConfig
from pushcut.plugins.policies.tinyvla.modeling import (
    NoiseSchedule,
    build_head,
    build_llm,
    build_vision,
    vision_tokens,
)
from pushcut.plugins.policies.tinyvla.processing import instruction_batch, pixels

POLICY_TYPE = "tinyvla"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "pushcut_policy.json"
LOG_2PI = math.log(2 * math.pi)


class TinyVLAPolicy(Policy):
    """The ``tinyvla`` policy. See the module docstring."""

    def __init__(self, config: TinyVLAConfig | None = None) -> None:
        super().__init__()
        config = config or TinyVLAConfig()
        self.config = config
        self.chunk_size, self.action_dim = config.chunk_size, config.action_dim
        self.num_log_probs = config.num_log_probs
        self.lora: dict[str, dict[str, object]] = {}
        """Adapter name → the LoRA settings it was made with, in creation order."""
        self.active: str | None = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self._build(config)
        for name in config.adapters.tasks:
            self.add_task(name)
        if config.adapters.tasks:
            self.set_task(config.adapters.active)
        if config.checkpoint is not None:
            self.load(Path(config.checkpoint))

    def _build(self, c: TinyVLAConfig) -> None:
        self.vision = build_vision(c)
        # LLaVA's projector (Linear-GELU-Linear) from vision width to LLM width.
        self.projector = nn.Sequential(nn.Linear(c.vision_hidden_size, c.hidden_size), nn.GELU(),
                                       nn.Linear(c.hidden_size, c.hidden_size))
        self.llm: nn.Module = build_llm(c)
        self.state_projector = nn.Linear(c.state_dim, c.hidden_size) if c.use_state else None
        self.cond_dim = c.hidden_size * (2 if c.use_state else 1)
        self.schedule = NoiseSchedule(c)
        g = torch.Generator().manual_seed(c.seed)
        # A function of the config (not saved): the x_N of greedy (temperature 0) sampling.
        self.register_buffer("greedy_noise", torch.randn(1, c.chunk_size, c.action_dim, generator=g),
                             persistent=False)
        if c.adapters.tasks and c.adapters.per_task_head:
            self.head = None
            self.heads = nn.ModuleDict()
            self._head_template = build_head(c, self.cond_dim)  # the init every new task's head copies
        else:
            self.head = build_head(c, self.cond_dim)
            self.heads = None
            self._head_template = None

    # ------------------------------------------------------------------ task adapters

    @property
    def tasks(self) -> list[str]:
        """Adapter names, in creation order."""
        return list(self.lora)

    def add_task(self, name: str, head_from: str | None = None) -> None:
        """A new LoRA adapter ``name`` (zero-initialised update: the model starts as the base) and,
        with per-task heads, a head copied from ``head_from`` (default: ``adapters.head_init`` or the
        first task). The new adapter becomes active; every other adapter is then frozen."""
        a = self.config.adapters
        if not a.tasks:
            raise ConfigError("this TinyVLA policy was built without task adapters; list them in "
                              "policy.adapters.tasks (e.g. [pick_cube]) to use add_task")
        if name in self.lora:
            raise ConfigError(f"task adapter {name!r} exists already; adapters: {self.tasks}")
        if not name or not all(ch.isalnum() or ch in "_-" for ch in name):
            raise ConfigError(f"task adapter name {name!r} must be letters, digits, _ and - (e.g. the env's task id)")
        lora = peft.LoraConfig(r=a.rank, lora_alpha=a.alpha, target_modules=list(a.targets), lora_dropout=0.0,
                               bias="none")
        # The LoRA A matrices are random: seed them by (policy seed, name), so an adapter does
        # not depend on the order tasks were added in, nor disturb the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed * 1_000_003 + zlib.crc32(name.encode()))
            if isinstance(self.llm, peft.PeftModel):
                self.llm.add_adapter(name, lora)
            else:
                self.llm = peft.get_peft_model(self.llm, lora, adapter_name=name)
        self.llm.to(self._device())
        self.lora[name] = a.lora()
        if self.heads is not None:
            source = head_from or a.head_init or (self.tasks[0] if len(self.tasks) > 1 else None)
            if source is not None and source not in self.heads:
                raise ConfigError(f"head_from={source!r} is not a task adapter; adapters: {self.tasks}")
            self.heads[name] = _copy_module(self.heads[source] if source else self._head_template)
        self.set_task(name)

    def set_task(self, name: str) -> None:
        """Make ``name`` the active adapter: the one that trains, and serves rows of tasks without an adapter."""
        if name not in self.lora:
            raise ConfigError(f"unknown task adapter {name!r}; adapters: {self.tasks or 'none'} "
                              "(add it with add_task, or list it in policy.adapters.tasks)")
        self.active = name
        self._route(name)

    def _route(self, name: str | None) -> None:
        """Switch the LLM's LoRA to ``name`` (None: no adapters) and re-apply which weights train.
        peft's set_adapter marks the adapter it activates as trainable; ours decides instead."""
        if name is not None and getattr(self.llm, "active_adapter", None) != name:
            self.llm.set_adapter(name)
        self._apply_trainable()

    def _apply_trainable(self) -> None:
        a = self.config.adapters
        if not self.lora:
            for p in self.parameters():
                p.requires_grad_(True)
            return
        for key, p in self.named_parameters():
            owner = _owner(key)
            p.requires_grad_(owner == self.active or (owner is None and a.train_base))

    def shard_units(self) -> list[torch.nn.Module]:
        """The GPTNeoX layers and the vision tower's encoder layers (``train.strategy=fsdp2``)."""
        return [m for m in self.modules() if type(m).__name__ in ("GPTNeoXLayer", "CLIPEncoderLayer",
                                                                  "SiglipEncoderLayer")]

    def trainable_parameters(self):
        """Without adapters every weight; with them the active adapter's LoRA (and head), plus the
        base weights when ``adapters.train_base`` is set."""
        self._route(self.active)
        return [p for p in self.parameters() if p.requires_grad]

    def _adapter_of(self, task_id: str) -> str | None:
        if not self.lora:
            return None
        return task_id if task_id in self.lora else self.active

    def _groups(self, obs: ObsBatch) -> list[tuple[str | None, list[int]]]:
        """Rows grouped by the adapter that serves them (first-seen order)."""
        groups: dict[str | None, list[int]] = {}
        for i, task in enumerate(obs.task_ids):
            groups.setdefault(self._adapter_of(task), []).append(i)
        return list(groups.items())

    @contextlib.contextmanager
    def _serving(self, name: str | None) -> Iterator[nn.Module]:
        """The denoiser of adapter ``name``, with the LLM switched to its LoRA for the block."""
        self._route(name)
        try:
            yield self.head if self.heads is None else self.heads[name]
        finally:
            self._route(self.active)

    # ------------------------------------------------------------------ conditioning

    def _device(self) -> torch.device:
        return next(self.vision.parameters()).device

    def _check_obs(self, obs: ObsBatch) -> None:
        c = self.config
        images = obs.images
        if images.ndim != 4 or tuple(images.shape[1:]) != (c.image_size, c.image_size, 3) or images.dtype != np.uint8:
            raise ConfigError(f"ObsBatch.images is {images.dtype} {tuple(images.shape)} but TinyVLA expects uint8 "
                              f"(B, {c.image_size}, {c.image_size}, 3); set policy.image_size to the env's camera size")
        if c.use_state:
            if obs.states is None or obs.states.ndim != 2 or obs.states.shape[1] != c.state_dim:
                got = None if obs.states is None else tuple(obs.states.shape)
                raise ConfigError(f"policy.use_state is true with policy.state_dim={c.state_dim}, but the "
                                  f"observations' states are {got}; fix policy.state_dim or set policy.use_state=false")

    def _image_tokens(self, obs: ObsBatch) -> torch.Tensor:
        """Projected patch tokens (B, P, hidden) — the base model's, shared by every adapter."""
        self._check_obs(obs)
        x = pixels(obs.images, self.config.vision_tower, self._device())
        return self.projector(vision_tokens(self.vision, x, self.config.vision_tower))

    def _cond(self, obs: ObsBatch, rows: list[int], image_tokens: torch.Tensor) -> torch.Tensor:
        """(len(rows), cond_dim): masked mean of the LLM's last hidden states over image + text tokens
        (⊕ projected proprio state). The LLM runs with whichever adapter is routed."""
        device = image_tokens.device
        index = torch.as_tensor(rows, device=device)
        ids, valid_text = instruction_batch([obs.instructions[i] for i in rows], self.config.max_instruction_tokens,
                                            device)
        embed = self.llm.get_input_embeddings()
        tokens = torch.cat([image_tokens[index], embed(ids)], dim=1)
        valid = torch.cat([valid_text.new_ones(len(rows), image_tokens.shape[1]), valid_text], dim=1)
        # Right padding: the valid tokens of every row sit at positions 0..n-1, whatever its batch.
        hidden = self.llm(inputs_embeds=tokens, attention_mask=valid.long(), use_cache=False).last_hidden_state
        weights = valid.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        if self.state_projector is None:
            return pooled
        states = torch.as_tensor(np.asarray(obs.states, dtype=np.float32)[rows], device=device)
        return torch.cat([pooled, self.state_projector(states)], dim=-1)

    def _per_group(self, obs: ObsBatch, fn: Callable[[nn.Module, torch.Tensor, list[int]], tuple[torch.Tensor, ...]]
                   ) -> tuple[torch.Tensor, ...]:
        """Run ``fn(head, cond, rows)`` for each adapter's rows and put the results back in row order."""
        image_tokens = self._image_tokens(obs)
        parts, order = [], []
        for name, rows in self._groups(obs):
            with self._serving(name) as head:
                parts.append(fn(head, self._cond(obs, rows, image_tokens), rows))
            order.extend(rows)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.as_tensor(order)] = torch.arange(len(order))
        inverse = inverse.to(image_tokens.device)
        return tuple(torch.cat(outs)[inverse] for outs in zip(*parts))

    # ------------------------------------------------------------------ diffusion steps

    def step_std(self, temperature: float) -> torch.Tensor:
        """(N,) std s of each DDIM step: temperature × max(σ_DDIM(η), min_std); zeros at temperature 0."""
        sched = self.schedule
        if temperature == 0:
            return torch.zeros_like(sched.ddim_sigma)
        return temperature * sched.ddim_sigma.clamp(min=self.config.min_std)

    def _step_mean(self, head: nn.Module, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor,
                   std: torch.Tensor) -> torch.Tensor:
        """μ of DDIM steps ``k`` (M,) from x (M, chunk, dim), with step stds ``std`` (M,)."""
        sched = self.schedule
        eps = head(x, sched.timesteps[k], cond)
        a_t = sched.alpha_t[k].view(-1, 1, 1)
        a_p = sched.alpha_prev[k].view(-1, 1, 1)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if self.config.clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
        direction = (1 - a_p - std.view(-1, 1, 1) ** 2).clamp(min=0.0).sqrt()
        return a_p.sqrt() * x0 + direction * eps

    @staticmethod
    def _log_density(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        s = std.view(-1, *([1] * (x.dim() - 1)))
        return -0.5 * ((x - mean) / s) ** 2 - s.log() - 0.5 * LOG_2PI

    def _sample_chain(self, head: nn.Module, cond: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Chain (M, N+1, chunk, dim) from x_N ~ N(0, I) to x_0, and log-densities (M, N, chunk, dim)."""
        n = self.config.inference_steps
        m = cond.shape[0]
        stds = self.step_std(temperature)
        # Greedy starts every row from one fixed draw of the prior (seeded by the config), so
        # temperature 0 is one deterministic map. x_N = 0, the prior's mode, is no typical draw:
        # the denoiser never saw an input that small at t = T, and its chunks come out wrong.
        shape = (m, self.chunk_size, self.action_dim)
        if temperature == 0:
            x = self.greedy_noise.to(cond.device).expand(shape).clone()
        else:
            x = torch.randn(shape, device=cond.device)
        chain, logps = [x], []
        for k in range(n):
            kk = torch.full((m,), k, dtype=torch.long, device=cond.device)
            s = stds[kk]
            mean = self._step_mean(head, x, kk, cond, s)
            if temperature == 0:
                x = mean
                logps.append(torch.zeros_like(mean))
            else:
                x = mean + s.view(-1, 1, 1) * torch.randn_like(mean)
                logps.append(self._log_density(x, mean, s))
            chain.append(x)
        return torch.stack(chain, dim=1), torch.stack(logps, dim=1)

    def _to_env(self, x0: torch.Tensor) -> np.ndarray:
        """Normalised chunk (B, chunk, dim) → env units float32; NaN stays NaN (the collector drops it)."""
        normalized = x0.detach().double().cpu().clamp(-1.0, 1.0)
        return unnormalize_actions(normalized, self.config.action_low, self.config.action_high).numpy().astype(np.float32)

    # ------------------------------------------------------------------ Policy contract

    @torch.no_grad()
    def act(self, obs: ObsBatch, temperature: float) -> ActionSample:
        """One chunk per row. ``sample["chain"]``: (B, N+1, chunk, dim), x_N … x_0 in normalised units;
        log-probs (B, K·chunk·dim): each element of the last K steps' log-density (zeros when greedy)."""
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        chain, logps = self._per_group(obs, lambda head, cond, rows: self._sample_chain(head, cond, temperature))
        k = self.config.scored_steps
        log_probs = logps[:, -k:].reshape(len(obs), -1).float()
        return ActionSample(
            actions=self._to_env(chain[:, -1]),
            sample={"chain": chain.float()},
            log_probs=log_probs,
            mask=torch.ones(log_probs.shape, dtype=torch.bool, device=log_probs.device),
        )

    def log_probs(self, obs: ObsBatch, sample: Mapping[str, torch.Tensor], temperature: float) -> Scores:
        """Differentiable (B, T) log-densities of the stored chain's last K steps, and their entropies."""
        if temperature <= 0:
            raise ValueError(f"log_probs needs temperature > 0 (got {temperature}): greedy DDIM steps have no density")
        c = self.config
        chain = sample.get("chain")
        expected = (len(obs), c.inference_steps + 1, c.chunk_size, c.action_dim)
        if chain is None or tuple(chain.shape) != expected:
            got = None if chain is None else tuple(chain.shape)
            raise ValueError(f"sample['chain'] must be {expected} as TinyVLAPolicy.act returns it, got {got}")
        n, k = c.inference_steps, c.scored_steps
        stds = self.step_std(temperature)
        steps = torch.arange(n - k, n, device=self._device())

        def score(head: nn.Module, cond: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            m = len(rows)
            x = chain[rows].to(cond.device)
            # All K steps of all rows in one denoiser pass: (m·K) rows, step-major within a row.
            x_in = x[:, n - k:n].reshape(m * k, c.chunk_size, c.action_dim)
            x_out = x[:, n - k + 1:].reshape(m * k, c.chunk_size, c.action_dim)
            kk = steps.repeat(m)
            s = stds[kk]
            mean = self._step_mean(head, x_in, kk, cond.repeat_interleave(k, dim=0), s)
            lp = self._log_density(x_out, mean, s).reshape(m, -1)
            ent = (0.5 * (1 + LOG_2PI) + s.log()).view(m, k, 1).expand(m, k, c.chunk_size * c.action_dim)
            return lp, ent.reshape(m, -1)

        log_probs, entropy = self._per_group(obs, score)
        return Scores(log_probs=log_probs, entropy=entropy.detach())

    def sft_loss(self, obs: ObsBatch, expert_actions: np.ndarray) -> torch.Tensor:
        """ε-prediction MSE: x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε at a uniform t; mean over all rows and elements."""
        c = self.config
        expert = np.asarray(expert_actions, dtype=np.float64)
        if expert.shape != (len(obs), c.chunk_size, c.action_dim):
            raise ValueError(f"expert_actions must be (B={len(obs)}, chunk={c.chunk_size}, action_dim={c.action_dim}), "
                             f"got {expert.shape}")
        x0_all = torch.from_numpy(normalize_actions(expert, c.action_low, c.action_high)).float().clamp(-1, 1)

        def loss(head: nn.Module, cond: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor]:
            x0 = x0_all[rows].to(cond.device)
            t = torch.randint(0, c.train_timesteps, (len(rows),), device=cond.device)
            noise = torch.randn_like(x0)
            a = self.schedule.alphas_cumprod[t].view(-1, 1, 1)
            eps = head(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, cond)
            return (((eps - noise) ** 2).mean(dim=(1, 2)),)

        (per_row,) = self._per_group(obs, loss)
        return per_row.mean()  # rows served only by frozen adapters: no gradient path, and the engine skips them

    # ------------------------------------------------------------------ checkpoints

    def _canonical_state(self) -> dict[str, torch.Tensor]:
        return {_canonical(k): v for k, v in self.state_dict().items()}

    def save(self, directory: Path) -> None:
        """``model.safetensors`` (base weights under ``llm.*``, each adapter under ``adapters.<task>.*``,
        heads under ``head.*`` / ``heads.<task>.*``) and ``pushcut_policy.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._canonical_state().items()}
        safetensors.torch.save_file(tensors, str(directory / WEIGHTS_FILE))
        config = dataclasses.asdict(self.config)
        config["checkpoint"] = None
        config["adapters"]["tasks"] = self.tasks
        config["adapters"]["active"] = self.active or ""
        meta = {"type": POLICY_TYPE, "config": config, "adapters": self.lora,
                "per_task_head": self.heads is not None}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    def load(self, directory: Path) -> None:
        """Load weights written by :meth:`save` in place. Adapters the checkpoint lacks (tasks added
        since) keep their fresh LoRA and take their head from the checkpoint's; anything else that
        does not fit is a :class:`CheckpointError`."""
        directory = Path(directory)
        meta, tensors = _read_checkpoint(directory)
        saved_lora: dict[str, dict] = meta.get("adapters") or {}
        saved_cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        extra = [name for name in saved_lora if name not in self.lora]
        if extra:
            raise CheckpointError(f"{directory} holds task adapters {extra} this policy lacks; add them to "
                                  f"policy.adapters.tasks (it has {self.tasks or 'none'})")
        mine = self.config.adapters.lora()
        for name, settings in saved_lora.items():
            theirs = {"rank": settings.get("rank"), "alpha": float(settings.get("alpha", 0)),
                      "targets": sorted(settings.get("targets", []))}
            if theirs != mine:
                raise CheckpointError(
                    f"task adapter {name!r} in {directory} has rank={theirs['rank']}, alpha={theirs['alpha']:g}, "
                    f"targets={theirs['targets']}, but policy.adapters has rank={mine['rank']}, "
                    f"alpha={mine['alpha']:g}, targets={mine['targets']}; set policy.adapters to match it")
        saved_per_task = bool(meta.get("per_task_head"))
        if saved_per_task and self.heads is None:
            raise CheckpointError(f"{directory} has one diffusion head per task; set policy.adapters.per_task_head=true "
                                  "and list its tasks in policy.adapters.tasks")
        own = self._canonical_state()
        wanted: dict[str, torch.Tensor] = {}
        for key in own:
            source = self._source_key(key, tensors, saved_lora, saved_per_task)
            if source is not None:
                wanted[key] = tensors[source]
        missing = sorted(k for k in own if k not in wanted and _owner(k) is None)
        shapes = [f"{k}: checkpoint {tuple(v.shape)} vs policy {tuple(own[k].shape)}"
                  for k, v in wanted.items() if v.shape != own[k].shape]
        used_prefixes = ("adapters.", "heads.", "head.")
        unexpected = sorted(k for k in tensors if not k.startswith(used_prefixes) and k not in own)
        if missing or shapes or unexpected:
            problems = [f"{what} {short_list(keys)}" for what, keys in
                        (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if keys]
            diffs = [f"{k}={saved_cfg[k]!r} (policy has {v!r})" for k, v in self.config.architecture().items()
                     if k in saved_cfg and _plain(saved_cfg[k]) != _plain(v)]
            hint = f"; it was saved with {', '.join(diffs)}" if diffs else ""
            raise CheckpointError(f"{directory / WEIGHTS_FILE} does not fit this TinyVLA policy: "
                                  f"{'; '.join(problems)}{hint}. Use the config stored in {META_FILE}")
        for name in ("inference_steps", "train_timesteps", "beta_schedule"):
            if name in saved_cfg and saved_cfg[name] != getattr(self.config, name):
                raise CheckpointError(f"{directory} was trained with policy.{name}={saved_cfg[name]!r}, this policy "
                                      f"has {getattr(self.config, name)!r}; set policy.{name}={saved_cfg[name]!r}")
        state = self.state_dict()  # tensors sharing storage with the parameters and buffers
        raw_of = {_canonical(k): k for k in state}
        with torch.no_grad():
            for key, value in wanted.items():
                state[raw_of[key]].copy_(value.to(state[raw_of[key]].dtype))
        self._route(self.active)

    def _source_key(self, key: str, tensors: Mapping[str, torch.Tensor], saved_lora: Mapping[str, dict],
                    saved_per_task: bool) -> str | None:
        """The checkpoint key that ``key`` (canonical) loads from, or None to keep the fresh value."""
        if key.startswith("adapters."):
            return key if key in tensors else None  # an adapter added since the checkpoint stays fresh
        if key.startswith("heads."):
            name, rest = key[len("heads."):].split(".", 1)
            if f"heads.{name}.{rest}" in tensors:
                return f"heads.{name}.{rest}"
            if not saved_per_task:
                return f"head.{rest}" if f"head.{rest}" in tensors else None
            source = self.config.adapters.head_init or next(iter(saved_lora), None)
            if source is None or source not in saved_lora:
                source = next(iter(saved_lora), None)
            return f"heads.{source}.{rest}" if source and f"heads.{source}.{rest}" in tensors else None
        if key.startswith("_head_template."):
            return None
        return key if key in tensors else None


# --------------------------------------------------------------------------- helpers


def _canonical(key: str) -> str:
    """A state-dict key in a form that does not depend on peft's wrapping:
    ``llm.base_model.model.X.base_layer.weight`` → ``llm.X.weight``;
    ``llm.base_model.model.X.lora_A.<task>.weight`` → ``adapters.<task>.X.lora_A.weight``."""
    if not key.startswith("llm."):
        return key
    path = key[len("llm."):]
    if path.startswith("base_model.model."):
        path = path[len("base_model.model."):]
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part in ("lora_A", "lora_B") and i + 1 < len(parts):
            name = parts[i + 1]
            return ".".join(["adapters", name, *parts[:i], part, *parts[i + 2:]])
    return "llm." + path.replace(".base_layer.", ".")


def _owner(key: str) -> str | None:
    """The task adapter a (raw or canonical) parameter belongs to; None for base weights."""
    if key.startswith("heads."):
        return key.split(".")[1]
    if key.startswith("_head_template."):
        return ""  # never trains: only ever copied
    canonical = _canonical(key)
    if canonical.startswith("adapters."):
        return canonical.split(".")[1]
    return None


def _copy_module(module: nn.Module) -> nn.Module:
    clone = copy.deepcopy(module)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def _read_checkpoint(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    if not directory.is_dir():
        raise CheckpointError(f"TinyVLA checkpoint {directory} does not exist (expected a directory written by "
                              "TinyVLAPolicy.save)")
    meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
    for path in (meta_path, weights_path):
        if not path.is_file():
            found = sorted(p.name for p in directory.iterdir())[:10]
            raise CheckpointError(f"{directory} is not a TinyVLA checkpoint: expected {META_FILE} and {WEIGHTS_FILE}, "
                                  f"found {found or 'an empty directory'}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path} is not valid JSON ({exc}); re-save the checkpoint") from None
    found_type = meta.get("type") if isinstance(meta, dict) else None
    if found_type != POLICY_TYPE:
        raise CheckpointError(f"{directory} holds a {found_type!r} policy checkpoint, not a TinyVLA one; set "
                              f"policy.type={found_type!r} to load it, or point at a tinyvla checkpoint")
    try:
        tensors = safetensors.torch.load_file(str(weights_path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"cannot read {weights_path}: {exc}") from None
    return meta, tensors


def _plain(value: object) -> object:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


__all__ = ["TinyVLAPolicy"]
