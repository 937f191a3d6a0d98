"""The ``original`` variant of the tinyvla policy: TinyVLA exactly as the original code builds and
runs it, loaded from the original's own run directories, one adapter per task.

Per task (one run of the original code each): a LoRA adapter on every Linear the run's
``adapter_config.json`` names (CLIP tower and GPTNeoX), the run's ``mm_projector``, its U-Net
head (``embed_out``) and its ``dataset_stats.pkl``; the base (CLIP tower, GPTNeoX, embeddings)
is shared. Forward pass of a row of task T, as the original eval (eval_real_franka.py) runs it::

    image, wrist_image ─ ÷255 ─ 95 % centre crop, resize back ─ pad square ─ CLIP processor
        ─ CLIP (+ LoRA_T), hidden layer −2 without CLS ─ projector_T ─┐  (two views, token_cat)
    "A chat … USER: " ids ─ embed ─ [image tokens] ─ "\\n{instruction} ASSISTANT: <|endoftext|>" ids ─ embed
        ─ GPTNeoX (+ LoRA_T) ─ mean over the row's tokens ─ LayerNorm ─ ⊕ (state − qpos_mean) / qpos_std
        ─ Linear = cond
    DDIM (diffusers', 10 of 100 steps) over head_T(x_t, t, cond) ─ x_0 ─ ((x_0 + 1) / 2)·(max − min) + min

Temperature 0 is the original's deterministic DDIM (η = 0) from x_N = ``torch.randn((1, chunk,
action_dim))`` after ``torch.manual_seed(policy.seed)``; temperature τ > 0 samples every step as
the native variant does (s = τ · max(σ_DDIM(η), min_std)), so each step has a log-density.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields
from pathlib import Path

import numpy as np
import peft
import torch
from torch import nn

from pushcut.contracts import ActionSample, ObsBatch, Policy, Scores
from pushcut.errors import CheckpointError, ConfigError
from pushcut.plugins.policies.tinyvla import original_io as io
from pushcut.plugins.policies.tinyvla.config import NAME, AdaptersConfig, TinyVLAConfig
from pushcut.plugins.policies.tinyvla.original_model import (
    INFERENCE_STEPS,
    TRAIN_TIMESTEPS,
    UNET_GROUPS,
    DDIMSchedule,
    PromptTokenizer,
    UnetHead,
    VisionTower,
    build_llm,
    build_projector,
    preprocess_views,
    processor_settings,
    unet_shapes,
)

LOG_2PI = math.log(2 * math.pi)
PROJECTOR_PREFIX = "gpt_neox.mm_projector."
HEAD_PREFIX = "embed_out."


@dataclasses.dataclass
class _TaskState:
    """What a task carries besides its trainable weights."""

    stats: dict[str, np.ndarray]
    config: dict
    step: int = 0
    run_name: str = ""
    """The run directory's name on export: the original's loader takes its LoRA branch only for a model
    name holding "pythia" and "lora" (get_model_name_from_path: ``<run>_checkpoint-N``)."""


def _shapes_of(config: dict, head: dict) -> dict[str, object]:
    """The native config's shape fields, as the checkpoint decides them."""
    vision = config["vision_config"]["vision_tower"]
    return dict(
        hidden_size=config["hidden_size"], layers=config["num_hidden_layers"], heads=config["num_attention_heads"],
        intermediate_size=config["intermediate_size"], rotary_pct=float(config.get("rotary_pct", 0.25)),
        vision_hidden_size=vision["hidden_size"], vision_layers=vision["num_hidden_layers"],
        vision_heads=vision["num_attention_heads"], vision_intermediate_size=vision["intermediate_size"],
        image_size=vision["image_size"], patch_size=vision["patch_size"], chunk_size=config["chunk_size"],
        action_dim=config["action_dim"], state_dim=config["state_dim"], use_state=config["state_dim"] > 0,
        head="unet", timestep_dim=head["step_embed_dim"], unet_dims=head["down_dims"],
        unet_kernel=head["kernel_size"], unet_groups=UNET_GROUPS, train_timesteps=TRAIN_TIMESTEPS,
        inference_steps=INFERENCE_STEPS, beta_schedule="squaredcos_cap_v2", clip_sample=True)


def _check_user_fields(user: TinyVLAConfig, resolved: dict[str, object], where: Path) -> None:
    """A shape field the user set (away from its default) must agree with the checkpoint."""
    defaults = {f.name: f.default for f in fields(TinyVLAConfig) if f.default is not dataclasses.MISSING}
    for name, value in resolved.items():
        mine = getattr(user, name)
        if isinstance(mine, tuple):
            mine, value = list(mine), list(value)  # type: ignore[arg-type]
        default = defaults.get(name)
        default = list(default) if isinstance(default, tuple) else default
        if mine != default and mine != value:
            raise ConfigError(f"policy.{name}={mine!r} disagrees with the original run {where} ({name}={value!r}); "
                              f"drop policy.{name} (shapes come from the checkpoint) or set it to {value!r}")


class OriginalTinyVLAPolicy(Policy):
    """TinyVLA as the original code runs it, from its per-task runs. See the module docstring."""

    variant = "original"

    def __init__(self, config: TinyVLAConfig) -> None:
        super().__init__()
        if importlib.util.find_spec("PIL") is None:  # the CLIP processor's resize goes through PIL, as the original's
            raise ConfigError("original TinyVLA runs need Pillow for the CLIP image processing; pip install pillow "
                              "(or pip install -e '.[tinyvla]')")
        sources = self._sources(config)
        runs = [io.read_run(path, task) for task, path in sources]
        first = runs[0]
        self.base_dir = io.find_base(first, config.model_base)
        _, base_tensors = io.read_base(self.base_dir)
        head_shape = unet_shapes({k[len(HEAD_PREFIX):]: v for k, v in first.non_lora.items()
                                  if k.startswith(HEAD_PREFIX)}, str(first.checkpoint / io.NON_LORA))
        resolved = _shapes_of(first.config, head_shape)
        _check_user_fields(config, resolved, first.run_dir)
        self._check_runs_agree(runs, head_shape)
        a = config.adapters
        r, alpha = first.lora_config["r"], float(first.lora_config.get("lora_alpha", 8))
        if a.rank != 8 and a.rank != r or a.alpha != 16.0 and a.alpha != alpha:
            raise ConfigError(f"policy.adapters rank={a.rank}, alpha={a.alpha:g} disagree with the original run "
                              f"{first.checkpoint} (r={r}, lora_alpha={alpha:g}); drop them (they come from its "
                              "adapter_config.json)")
        if tuple(a.targets) != AdaptersConfig().targets or not a.per_task_head or a.train_base:
            raise ConfigError(f"policy.adapters.targets / per_task_head / train_base do not apply to original TinyVLA "
                              f"runs: LoRA targets come from {first.checkpoint / io.ADAPTER_CONFIG}, every task has its "
                              "own head and projector, and the base stays frozen; drop them")
        tasks = [task for task, _ in sources]
        extra = [t for t in a.tasks if t not in tasks]
        active = a.active or (list(a.tasks)[-1] if a.tasks else tasks[-1])
        adapters = dataclasses.replace(a, tasks=tuple(tasks + extra), active=active, rank=r, alpha=alpha)
        # action_low / action_high do not apply: actions map through each task's dataset_stats.pkl
        self.config = dataclasses.replace(config, **resolved, adapters=adapters, action_low=None, action_high=None)
        self.seed = config.seed
        c = self.config
        self.chunk_size, self.action_dim = c.chunk_size, c.action_dim
        self.num_log_probs = c.num_log_probs
        self.run_config = first.config
        self.lora_config = dict(first.lora_config)
        self.head_shape = head_shape
        self.processor = processor_settings(first.processor or io._read_json(self.base_dir / io.PROCESSOR),
                                            str(first.checkpoint))
        if self.processor["size"] != c.image_size:
            raise CheckpointError(f"{first.checkpoint}: the CLIP processor makes {self.processor['size']} px images but "
                                  f"the vision tower takes {c.image_size} px")
        self.tokenizer = PromptTokenizer(self.base_dir / "tokenizer.json")
        if self.tokenizer.vocab_size > first.config["vocab_size"]:
            raise CheckpointError(f"the tokenizer in {self.base_dir} has {self.tokenizer.vocab_size} tokens but the "
                                  f"model's embedding has {first.config['vocab_size']} rows: they belong to "
                                  "different models")
        self._build(first.config, base_tensors, first)
        self.tasks_state: dict[str, _TaskState] = {}
        for run in runs:
            self._add_adapter(run.task)
            self._load_task(run)
        for task in extra:
            self.add_task(task)
        self.active = active
        if active not in self.tasks_state:
            raise ConfigError(f"policy.adapters.active={active!r} is not one of the tasks {self.tasks}")
        self.set_task(active)

    # ------------------------------------------------------------------ construction

    @staticmethod
    def _sources(config: TinyVLAConfig) -> list[tuple[str, Path]]:
        """(task, path) of every run to load."""
        names = list(config.adapters.tasks)
        if config.runs:
            paths = [Path(p) for p in config.runs]
        else:
            path = Path(config.checkpoint or "")
            meta = io.saved_policy(path)
            if meta is not None:
                tasks, names = meta.get("tasks") or [], meta.get("runs") or {}
                return [(t, path / names.get(t, t)) for t in tasks]
            paths = [path]
        out = []
        for i, path in enumerate(paths):
            found = io.locate(path)
            default = (found[0] if found else path).resolve().name
            task = names[i] if i < len(names) else default
            if not NAME.fullmatch(task):
                raise ConfigError(f"task name {task!r} (from {path}) is not a valid adapter name; name the tasks with "
                                  "policy.adapters.tasks (letters, digits, _ and -)")
            out.append((task, path))
        if len({t for t, _ in out}) != len(out):
            raise ConfigError(f"two runs share the task name {[t for t, _ in out]}; name them with policy.adapters.tasks")
        return out

    @staticmethod
    def _check_runs_agree(runs: list[io.OriginalRun], head_shape: dict) -> None:
        first = runs[0]
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                "rotary_pct", "action_dim", "state_dim", "chunk_size")
        tower_keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                      "patch_size", "hidden_act", "mm_vision_select_layer", "mm_vision_select_feature")
        projector_keys = ("mm_projector_type", "mm_hidden_size", "hidden_size")

        def shape(config: dict) -> dict:
            vision = config.get("vision_config", {})
            out = {k: config.get(k) for k in keys}
            out.update({f"vision_config.vision_tower.{k}": vision.get("vision_tower", {}).get(k) for k in tower_keys})
            out.update({f"vision_config.mm_projector.{k}": vision.get("mm_projector", {}).get(k) for k in projector_keys})
            return out

        mine = shape(first.config)
        for run in runs[1:]:
            theirs = shape(run.config)
            for key, value in mine.items():
                if theirs[key] != value:
                    raise CheckpointError(f"runs {first.run_dir} and {run.run_dir} differ in {key} ({value!r} vs "
                                          f"{theirs[key]!r}); one policy needs runs of one base model and action space")
            for key in ("r", "lora_alpha", "target_modules"):
                mine, theirs = first.lora_config.get(key), run.lora_config.get(key)
                if key == "target_modules":
                    mine, theirs = sorted(mine), sorted(theirs)
                if mine != theirs:
                    raise CheckpointError(f"the LoRA adapters of {first.checkpoint} and {run.checkpoint} differ in {key} "
                                          f"({mine!r} vs {theirs!r}); pushcut loads per-task adapters of one LoRA "
                                          "layout (same rank, alpha and target modules)")
            shape = unet_shapes({k[len(HEAD_PREFIX):]: v for k, v in run.non_lora.items()
                                 if k.startswith(HEAD_PREFIX)}, str(run.checkpoint / io.NON_LORA))
            if shape != head_shape:
                raise CheckpointError(f"the diffusion heads of {first.checkpoint} and {run.checkpoint} differ in shape "
                                      f"({head_shape} vs {shape})")

    def _build(self, config: dict, base_tensors: dict[str, torch.Tensor], first: io.OriginalRun) -> None:
        c = self.config
        vision = config["vision_config"]["vision_tower"]
        name = str(vision.get("vision_model_name_or_path", "clip"))
        if "clip" not in name:
            raise CheckpointError(f"{first.run_dir / 'config.json'}: vision tower {name!r}; pushcut's original variant "
                                  "loads CLIP towers")
        if config.get("mm_use_im_start_end"):
            raise CheckpointError(f"{first.run_dir / 'config.json'}: mm_use_im_start_end is true; pushcut loads runs "
                                  "trained without image start/end tokens (the original's default)")
        if config.get("concat", "token_cat") != "token_cat":
            raise CheckpointError(f"{first.run_dir / 'config.json'}: concat={config.get('concat')!r}; the original "
                                  "eval (two camera views) needs token_cat")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            root = nn.Module()
            root.gpt_neox = build_llm({**config, "rotary_emb_base": config.get("rotary_emb_base", 10000)})
            root.gpt_neox.vision_tower = VisionTower(vision)
            projector_cfg = config["vision_config"].get("mm_projector", {})
            self._projector_args = (projector_cfg.get("mm_projector_type", "linear"),
                                    int(projector_cfg.get("mm_hidden_size", vision["hidden_size"])),
                                    int(projector_cfg.get("hidden_size", config["hidden_size"])))
            self._head_args = dict(action_dim=c.action_dim, hidden_size=c.hidden_size, state_dim=c.state_dim,
                                   **self.head_shape)
        # The base: the base directory's weights, then the first run's non-LoRA copy of them (what the
        # original loads last); every other run must hold the same base weights.
        wanted = {k: v for k, v in root.state_dict().items()}
        loaded = set()
        for source in (base_tensors, first.non_lora):
            for key, value in source.items():
                if key in wanted:
                    if tuple(value.shape) != tuple(wanted[key].shape):
                        raise CheckpointError(f"{key}: checkpoint shape {tuple(value.shape)} but the run's config.json "
                                              f"makes {tuple(wanted[key].shape)}")
                    wanted[key].copy_(value.to(wanted[key].dtype))
                    loaded.add(key)
        missing = [k for k in wanted if k not in loaded]
        if missing:
            raise CheckpointError(f"the base {self.base_dir} and run {first.checkpoint} lack {len(missing)} weights of "
                                  f"the model, e.g. {missing[0]}")
        self._base_keys = sorted(wanted)
        target_modules = list(self.lora_config["target_modules"])
        self.lora_settings = peft.LoraConfig(r=self.lora_config["r"], lora_alpha=self.lora_config.get("lora_alpha", 8),
                                             target_modules=target_modules, lora_dropout=0.0, bias="none")
        self._root = root
        self.llm: nn.Module | None = None
        self.projectors = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.schedule = DDIMSchedule()
        g = torch.Generator().manual_seed(c.seed)
        # x_N of greedy sampling: torch.randn((1, chunk, dim)) after torch.manual_seed(seed), as the original draws it.
        self.register_buffer("greedy_noise", torch.randn((1, c.chunk_size, c.action_dim), generator=g), persistent=False)

    def _add_adapter(self, task: str) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if self.llm is None:
                self.llm = peft.get_peft_model(self._root, copy.deepcopy(self.lora_settings), adapter_name=task)
            else:
                self.llm.add_adapter(task, copy.deepcopy(self.lora_settings))
            self.projectors[task] = build_projector(*self._projector_args)
            self.heads[task] = UnetHead(**self._head_args)
        self.llm.to(self.device)

    @property
    def model(self) -> nn.Module:
        """The wrapped root (``gpt_neox`` with its ``vision_tower``), original module paths."""
        return self.llm.base_model.model

    def _load_task(self, run: io.OriginalRun) -> None:
        """A run's LoRA, projector, head and stats into adapter ``run.task``; its base weights must equal ours."""
        task = run.task
        base = self.model.state_dict()
        for key, value in run.non_lora.items():
            plain = key.replace(".base_layer.", ".")
            if plain.startswith((PROJECTOR_PREFIX, HEAD_PREFIX)):
                continue
            mine = base.get(_peft_key(plain, base))
            if mine is not None and not torch.equal(mine, value.to(mine.dtype)):
                raise CheckpointError(f"run {run.checkpoint} changed the base weight {plain} that the other tasks share; "
                                      "pushcut loads runs whose base (CLIP, GPTNeoX) stayed frozen, as LoRA training "
                                      "leaves it")
        self._load_module(self.projectors[task], run.non_lora, PROJECTOR_PREFIX, run.checkpoint)
        self._load_module(self.heads[task], run.non_lora, HEAD_PREFIX, run.checkpoint)
        params = dict(self.llm.named_parameters())
        expected = {}
        for name in params:
            marker = f".{task}.weight"
            for which in ("lora_A", "lora_B"):
                if f".{which}{marker}" in name:
                    module = name[len("base_model.model."):].split(f".{which}.")[0]
                    expected[f"{module}.{which}"] = params[name]
        missing = sorted(set(expected) - set(run.lora))
        unexpected = sorted(set(run.lora) - set(expected))
        if missing or unexpected:
            what = f"lacks LoRA weights for {missing[0]}" if missing else f"has LoRA weights for unknown {unexpected[0]}"
            raise CheckpointError(f"the adapter in {run.checkpoint} {what}; its target_modules do not match the model")
        with torch.no_grad():
            for key, param in expected.items():
                value = run.lora[key]
                if tuple(value.shape) != tuple(param.shape):
                    raise CheckpointError(f"{run.checkpoint}: LoRA {key} has shape {tuple(value.shape)}, the model "
                                          f"needs {tuple(param.shape)}")
                param.copy_(value.to(param.dtype))
        for key in ("qpos_mean", "qpos_std"):
            if run.stats[key].shape != (self.config.state_dim,):
                raise CheckpointError(f"{run.run_dir / io.STATS}: {key} has {run.stats[key].size} values, the state has "
                                      f"{self.config.state_dim}")
        for key in ("action_min", "action_max"):
            if run.stats[key].shape != (self.config.action_dim,):
                raise CheckpointError(f"{run.run_dir / io.STATS}: {key} has {run.stats[key].size} values, actions have "
                                      f"{self.config.action_dim}")
        self.tasks_state[task] = _TaskState(stats=run.stats, config=run.config, step=run.step,
                                            run_name=_run_name(run.run_dir.name, task))

    @staticmethod
    def _load_module(module: nn.Module, tensors: Mapping[str, torch.Tensor], prefix: str, where: Path) -> None:
        own = module.state_dict()
        found = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing = [k for k in own if k not in found]
        if missing:
            raise CheckpointError(f"{where / io.NON_LORA} lacks {prefix}{missing[0]} (and {len(missing) - 1} more)")
        with torch.no_grad():
            for key, value in own.items():
                if tuple(found[key].shape) != tuple(value.shape):
                    raise CheckpointError(f"{where / io.NON_LORA}: {prefix}{key} has shape {tuple(found[key].shape)}, "
                                          f"the run's config makes {tuple(value.shape)}")
                value.copy_(found[key].to(value.dtype))

    # ------------------------------------------------------------------ tasks

    @property
    def tasks(self) -> list[str]:
        return list(self.tasks_state)

    def add_task(self, name: str, head_from: str | None = None) -> None:
        """A fresh task: zero-update LoRA (the base model), projector, head and stats copied from ``head_from``
        (default ``adapters.head_init`` or the first task). It becomes the active task."""
        if name in self.tasks_state:
            raise ConfigError(f"task adapter {name!r} exists already; adapters: {self.tasks}")
        if not NAME.fullmatch(name):
            raise ConfigError(f"task adapter name {name!r} must be letters, digits, _ and - (e.g. the env's task id)")
        source = head_from or self.config.adapters.head_init or self.tasks[0]
        if source not in self.tasks_state:
            raise ConfigError(f"head_from={source!r} is not a task adapter; adapters: {self.tasks}")
        self._add_adapter(name)
        with torch.no_grad():
            for src, dst in ((self.projectors[source], self.projectors[name]), (self.heads[source], self.heads[name])):
                dst.load_state_dict(src.state_dict())
        state = self.tasks_state[source]
        self.tasks_state[name] = _TaskState(stats=dict(state.stats), config=dict(state.config), step=0,
                                            run_name=_run_name("", name))
        self.set_task(name)

    def set_task(self, name: str) -> None:
        if name not in self.tasks_state:
            raise ConfigError(f"unknown task adapter {name!r}; adapters: {self.tasks}")
        self.active = name
        self._route(name)

    def _route(self, name: str) -> None:
        if self.llm.active_adapter != name:
            self.llm.set_adapter(name)
        for key, p in self.named_parameters():
            p.requires_grad_(_owner(key) == self.active)

    def trainable_parameters(self):
        """The active task's LoRA, projector and head."""
        self._route(self.active)
        return [p for p in self.parameters() if p.requires_grad]

    def _adapter_of(self, task_id: str) -> str:
        return task_id if task_id in self.tasks_state else self.active

    @contextlib.contextmanager
    def _serving(self, name: str) -> Iterator[None]:
        self._route(name)
        try:
            yield
        finally:
            self._route(self.active)

    @property
    def device(self) -> torch.device:
        return self.greedy_noise.device

    # ------------------------------------------------------------------ conditioning

    def pixel_values(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) pixel values of both views, as the original eval makes them."""
        if obs.wrist_images is None:
            raise ConfigError("the original TinyVLA takes two camera views: ObsBatch.wrist_images is missing (set the "
                              "env's second camera, e.g. env.wrist_camera=true)")
        for name, views in (("images", obs.images), ("wrist_images", obs.wrist_images)):
            if views.ndim != 4 or views.shape[-1] != 3 or views.dtype != np.uint8:
                raise ConfigError(f"ObsBatch.{name} is {views.dtype} {tuple(views.shape)}; TinyVLA takes uint8 "
                                  "(B, H, W, 3) camera images")
        device = self.device
        return (preprocess_views(obs.images, self.processor).to(device),
                preprocess_views(obs.wrist_images, self.processor).to(device))

    def normalized_states(self, obs: ObsBatch, rows: list[int], task: str) -> torch.Tensor | None:
        c = self.config
        if c.state_dim == 0:
            return None
        if obs.states is None or obs.states.ndim != 2 or obs.states.shape[1] != c.state_dim:
            got = None if obs.states is None else tuple(obs.states.shape)
            raise ConfigError(f"the TinyVLA run takes a {c.state_dim}-dim state (state_dim in its config.json), but "
                              f"the observations' states are {got}")
        stats = self.tasks_state[task].stats
        states = (np.asarray(obs.states, dtype=np.float32)[rows] - stats["qpos_mean"]) / stats["qpos_std"]
        return torch.from_numpy(states.astype(np.float32)).to(self.device)

    def condition(self, obs: ObsBatch, rows: list[int], task: str, pixels: tuple[torch.Tensor, torch.Tensor]
                  ) -> torch.Tensor:
        """(len(rows), hidden): the head's conditioning vector of task ``task`` (its adapter routed)."""
        device = self.device
        index = torch.as_tensor(rows, device=device)
        tower, projector = self.model.gpt_neox.vision_tower, self.projectors[task]
        m = len(rows)
        features = projector(tower(torch.cat([pixels[0][index], pixels[1][index]])))
        image_tokens = torch.cat([features[:m], features[m:]], dim=1)  # token_cat: view 1 then view 2
        embed = self.model.gpt_neox.embed_in
        sequences = []
        for j, row in enumerate(rows):
            before, after = self.tokenizer.encode(obs.instructions[row])
            ids = torch.tensor(before + after, dtype=torch.long, device=device)
            if ids.numel() and int(ids.max()) >= embed.num_embeddings:
                raise CheckpointError(f"the tokenizer gave id {int(ids.max())} but the embedding has "
                                      f"{embed.num_embeddings} rows: tokenizer and model do not match")
            text = embed(ids)
            sequences.append(torch.cat([text[:len(before)], image_tokens[j], text[len(before):]]))
        length = max(s.shape[0] for s in sequences)
        tokens = image_tokens.new_zeros(m, length, image_tokens.shape[-1])
        valid = torch.zeros(m, length, dtype=torch.bool, device=device)
        for j, s in enumerate(sequences):
            tokens[j, : s.shape[0]] = s
            valid[j, : s.shape[0]] = True
        hidden = self.model.gpt_neox(inputs_embeds=tokens, attention_mask=valid.long(), use_cache=False).last_hidden_state
        return self.heads[task].condition(hidden, valid, self.normalized_states(obs, rows, task))

    def _groups(self, obs: ObsBatch) -> list[tuple[str, list[int]]]:
        groups: dict[str, list[int]] = {}
        for i, task in enumerate(obs.task_ids):
            groups.setdefault(self._adapter_of(task), []).append(i)
        return list(groups.items())

    def _per_group(self, obs: ObsBatch, fn: Callable[[str, torch.Tensor, list[int]], tuple[torch.Tensor, ...]]
                   ) -> tuple[torch.Tensor, ...]:
        pixels = self.pixel_values(obs)
        parts, order = [], []
        for name, rows in self._groups(obs):
            with self._serving(name):
                parts.append(fn(name, self.condition(obs, rows, name, pixels), rows))
            order.extend(rows)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.as_tensor(order)] = torch.arange(len(order))
        inverse = inverse.to(self.device)
        return tuple(torch.cat(outs)[inverse] for outs in zip(*parts))

    # ------------------------------------------------------------------ diffusion

    def step_std(self, temperature: float) -> torch.Tensor:
        sched = self.schedule
        if temperature == 0:
            return torch.zeros_like(sched.ddim_sigma)
        return temperature * (self.config.eta * sched.ddim_sigma).clamp(min=self.config.min_std)

    def _step_mean(self, task: str, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor, std: torch.Tensor
                   ) -> torch.Tensor:
        eps = self.heads[task](x, self.schedule.timesteps[k], cond)
        return self.schedule.step_mean(eps, x, k, std)

    @staticmethod
    def _log_density(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        s = std.view(-1, *([1] * (x.dim() - 1)))
        return -0.5 * ((x - mean) / s) ** 2 - s.log() - 0.5 * LOG_2PI

    def _sample_chain(self, task: str, cond: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        m = cond.shape[0]
        stds = self.step_std(temperature)
        shape = (m, c.chunk_size, c.action_dim)
        x = self.greedy_noise.expand(shape).clone() if temperature == 0 else torch.randn(shape, device=cond.device)
        chain, logps = [x], []
        for k in range(c.inference_steps):
            kk = torch.full((m,), k, dtype=torch.long, device=cond.device)
            s = stds[kk]
            mean = self._step_mean(task, x, kk, cond, s)
            if temperature == 0:
                x = mean
                logps.append(torch.zeros_like(mean))
            else:
                x = mean + s.view(-1, 1, 1) * torch.randn_like(mean)
                logps.append(self._log_density(x, mean, s))
            chain.append(x)
        return torch.stack(chain, dim=1), torch.stack(logps, dim=1)

    def to_env(self, x0: np.ndarray, task_ids: list[str]) -> np.ndarray:
        """Normalised chunks (B, chunk, dim) → env units with each row's task's action min / max."""
        out = np.empty(x0.shape, dtype=np.float32)
        for i, task in enumerate(task_ids):
            stats = self.tasks_state[self._adapter_of(task)].stats
            out[i] = ((x0[i] + 1) / 2) * (stats["action_max"] - stats["action_min"]) + stats["action_min"]
        return out

    # ------------------------------------------------------------------ Policy contract

    @torch.no_grad()
    def act(self, obs: ObsBatch, temperature: float) -> ActionSample:
        """As the native variant: ``sample["chain"]`` (B, N+1, chunk, dim) normalised; log-probs of the last K steps."""
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        chain, logps = self._per_group(obs, lambda task, cond, rows: self._sample_chain(task, cond, temperature))
        k = self.config.scored_steps
        log_probs = logps[:, -k:].reshape(len(obs), -1).float()
        return ActionSample(actions=self.to_env(chain[:, -1].float().cpu().numpy(), list(obs.task_ids)),
                            sample={"chain": chain.float()}, log_probs=log_probs,
                            mask=torch.ones(log_probs.shape, dtype=torch.bool, device=log_probs.device))

    def log_probs(self, obs: ObsBatch, sample: Mapping[str, torch.Tensor], temperature: float) -> Scores:
        if temperature <= 0:
            raise ValueError(f"log_probs needs temperature > 0 (got {temperature}): greedy DDIM steps have no density")
        c = self.config
        chain = sample.get("chain")
        expected = (len(obs), c.inference_steps + 1, c.chunk_size, c.action_dim)
        if chain is None or tuple(chain.shape) != expected:
            got = None if chain is None else tuple(chain.shape)
            raise ValueError(f"sample['chain'] must be {expected} as act returns it, got {got}")
        n, k = c.inference_steps, c.scored_steps
        stds = self.step_std(temperature)
        steps = torch.arange(n - k, n, device=self.device)

        def score(task: str, cond: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            m = len(rows)
            x = chain[rows].to(cond.device)
            x_in = x[:, n - k:n].reshape(m * k, c.chunk_size, c.action_dim)
            x_out = x[:, n - k + 1:].reshape(m * k, c.chunk_size, c.action_dim)
            kk = steps.repeat(m)
            s = stds[kk]
            mean = self._step_mean(task, x_in, kk, cond.repeat_interleave(k, dim=0), s)
            lp = self._log_density(x_out, mean, s).reshape(m, -1)
            ent = (0.5 * (1 + LOG_2PI) + s.log()).view(m, k, 1).expand(m, k, c.chunk_size * c.action_dim)
            return lp, ent.reshape(m, -1)

        log_probs, entropy = self._per_group(obs, score)
        return Scores(log_probs=log_probs, entropy=entropy.detach())

    def sft_loss(self, obs: ObsBatch, expert_actions: np.ndarray) -> torch.Tensor:
        """The original's training loss: ε-prediction MSE at a uniform t, actions min/max-normalised to [-1, 1]."""
        c = self.config
        expert = np.asarray(expert_actions, dtype=np.float32)
        if expert.shape != (len(obs), c.chunk_size, c.action_dim):
            raise ValueError(f"expert_actions must be (B={len(obs)}, chunk={c.chunk_size}, action_dim={c.action_dim}), "
                             f"got {expert.shape}")

        def loss(task: str, cond: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor]:
            stats = self.tasks_state[task].stats
            x0 = (expert[rows] - stats["action_min"]) / (stats["action_max"] - stats["action_min"]) * 2 - 1
            x0 = torch.from_numpy(x0.astype(np.float32)).to(cond.device)
            t = torch.randint(0, c.train_timesteps, (len(rows),), device=cond.device)
            noise = torch.randn_like(x0)
            a = self.schedule.alphas_cumprod[t].view(-1, 1, 1)
            eps = self.heads[task](a.sqrt() * x0 + (1 - a).sqrt() * noise, t, cond)
            return (((eps - noise) ** 2).mean(dim=(1, 2)),)

        (per_row,) = self._per_group(obs, loss)
        return per_row.mean()  # rows served only by frozen adapters: no gradient path, and the engine skips them

    # ------------------------------------------------------------------ original files

    def task_files(self, task: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(adapter_config, LoRA weights, non-LoRA weights) of one task in the original's names."""
        lora: dict[str, torch.Tensor] = {}
        non_lora: dict[str, torch.Tensor] = {}
        for name, param in self.llm.named_parameters():
            path = name[len("base_model.model."):]
            for which in ("lora_A", "lora_B"):
                if f".{which}.{task}." in path:
                    lora[f"{path.split(f'.{which}.')[0]}.{which}"] = param.detach()
            if ".lora_" not in path:
                non_lora[path.replace(".base_layer.", ".")] = param.detach()
        for key, value in self.projectors[task].state_dict().items():
            non_lora[PROJECTOR_PREFIX + key] = value.detach()
        for key, value in self.heads[task].state_dict().items():
            non_lora[HEAD_PREFIX + key] = value.detach()
        lora_config = {**self.lora_config, "inference_mode": True}
        return lora_config, lora, non_lora

    def export(self, directory: Path, tasks: list[str] | None = None) -> dict[str, Path]:
        """Write the original layout: ``base/`` (the base model's files, hard-linked) and one run per task
        (``<run name>/config.json``, ``dataset_stats.pkl``, ``checkpoint-N/``; the source run's name, or
        ``llava_pythia_lora_<task>``). Returns task → checkpoint dir, which the original's eval loads with
        ``model_path=<checkpoint>``, ``model_base=<directory>/base``."""
        directory = Path(directory)
        base = directory / "base"
        if base.resolve() != self.base_dir.resolve():
            io.copy_base(self.base_dir, base)
        out = {}
        for task in tasks or self.tasks:
            if task not in self.tasks_state:
                raise ConfigError(f"unknown task adapter {task!r}; adapters: {self.tasks}")
            state = self.tasks_state[task]
            config = {**state.config, "_name_or_path": str(base.resolve())}
            lora_config, lora, non_lora = self.task_files(task)
            lora_config["base_model_name_or_path"] = str(base.resolve())
            out[task] = io.write_run(directory / state.run_name, state.step, config, state.stats, lora_config, lora,
                                     non_lora, self.base_dir)
        return out

    def save(self, directory: Path) -> None:
        """The original layout (see :meth:`export`) plus ``pushcut_policy.json`` naming the tasks."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.export(directory)
        meta = {"type": "tinyvla", "variant": self.variant, "tasks": self.tasks, "active": self.active,
                "runs": {task: state.run_name for task, state in self.tasks_state.items()}}
        (directory / io.POLICY_META).write_text(json.dumps(meta, indent=2) + "\n")

    def load(self, directory: Path) -> None:
        """Load a directory :meth:`save` wrote, or one original run (into the task of the same name, else the
        active one), in place."""
        directory = Path(directory)
        meta = io.saved_policy(directory)
        if meta is not None:
            tasks = list(meta.get("tasks") or [])
            extra = [t for t in tasks if t not in self.tasks_state]
            if extra:
                raise CheckpointError(f"{directory} holds task adapters {extra} this policy lacks; it has {self.tasks}")
            names = meta.get("runs") or {}
            runs = [io.read_run(directory / names.get(t, t), t) for t in tasks]
        elif io.locate(directory) is not None:
            found = io.locate(directory)
            name = found[0].resolve().name
            runs = [io.read_run(directory, name if name in self.tasks_state else self.active)]
        else:
            raise CheckpointError(f"{directory} is neither an original TinyVLA run nor a policy the original variant "
                                  f"saved (expected {io.POLICY_META} or {io.ADAPTER_CONFIG})")
        for run in runs:
            self._load_task(run)
        self._route(self.active)


def _run_name(source: str, task: str) -> str:
    """A run directory name the original's loader accepts: the source run's own name when it does."""
    lower = source.lower()
    return source if "pythia" in lower and "lora" in lower else f"llava_pythia_lora_{task}"


def _peft_key(plain: str, state: Mapping[str, torch.Tensor]) -> str:
    """The state-dict key of an original parameter name in the peft-wrapped root."""
    if plain in state:
        return plain
    module, leaf = plain.rsplit(".", 1)
    return f"{module}.base_layer.{leaf}"


def _owner(key: str) -> str | None:
    """The task a parameter belongs to (LoRA, projector, head); None for the shared base."""
    if key.startswith(("projectors.", "heads.")):
        return key.split(".")[1]
    for which in (".lora_A.", ".lora_B."):
        if which in key:
            return key.split(which)[1].split(".")[0]
    return None


__all__ = ["OriginalTinyVLAPolicy"]
