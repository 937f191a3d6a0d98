"""Configuration of the TinyVLA policy (``policy.type: tinyvla``)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields

from pushcut.errors import ConfigError

SIZES: dict[str, dict[str, int]] = {
    # Our reading of TinyVLA-S / -B / -H (0.4B / 0.7B / 1.3B): a LLaVA-Pythia VLM, i.e. a Pythia LLM
    # (shapes of the published Pythia-160m / -410m / -1b configs) behind a CLIP ViT-L/14 tower (~0.3B).
    "0.4b": dict(hidden_size=768, layers=12, heads=12, intermediate_size=3072),
    "0.7b": dict(hidden_size=1024, layers=24, heads=16, intermediate_size=4096),
    "1.3b": dict(hidden_size=2048, layers=16, heads=8, intermediate_size=8192),
}
"""``policy.size`` → Pythia (GPTNeoX) LLM shapes; every named size uses :data:`CLIP_L14` as vision tower."""

CLIP_L14 = dict(image_size=224, patch_size=14, vision_hidden_size=1024, vision_layers=24, vision_heads=16,
                vision_intermediate_size=4096)
"""CLIP ViT-L/14 at 224 px, the vision tower of the named sizes."""

HEADS = ("mlp", "unet")
VISION_TOWERS = ("clip", "siglip")
BETA_SCHEDULES = ("squaredcos_cap_v2", "linear")
NAME = re.compile(r"[A-Za-z0-9_-]+")

ARCHITECTURE_FIELDS = (
    "size", "vision_tower", "image_size", "patch_size", "vision_hidden_size", "vision_layers", "vision_heads",
    "vision_intermediate_size", "hidden_size", "layers", "heads", "intermediate_size", "rotary_pct",
    "max_instruction_tokens", "chunk_size", "action_dim", "use_state", "state_dim", "head", "head_width",
    "head_blocks", "unet_dims", "unet_kernel", "unet_groups", "timestep_dim",
)
"""Fields that decide tensor shapes; a checkpoint only loads into a config that agrees on all of them."""


@dataclass
class AdaptersConfig:
    """Incremental task adapters: one named peft LoRA adapter (and optionally one diffusion head) per task.

    Each observation row is routed by its ``task_id``: a task with an adapter of that name uses it,
    any other task uses ``active``. Only the active adapter (and its head) trains; older ones are frozen."""

    tasks: tuple[str, ...] = ()
    """Adapter names, one per task (use the env's task ids); empty = no adapters, the whole model trains."""
    active: str = ""
    """The adapter that trains and serves tasks without an own adapter; empty = the last of ``tasks``."""
    rank: int = 8
    """LoRA rank r of every adapter."""
    alpha: float = 16.0
    """LoRA alpha (the update is scaled by alpha / rank)."""
    targets: tuple[str, ...] = ("query_key_value", "dense")
    """GPTNeoX linear layers that get LoRA (module names: query_key_value, dense, dense_h_to_4h, dense_4h_to_h)."""
    per_task_head: bool = True
    """Give each task its own copy of the diffusion head (trained with its adapter); false = one shared head."""
    head_init: str = ""
    """Adapter whose head a new task's head starts from; empty = the first of ``tasks`` (or the shared head)."""
    train_base: bool = False
    """Also train the base weights (vision tower, projector, LLM, shared head): for the first task's SFT only."""

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = (self.tasks,)
        self.tasks = tuple(self.tasks)
        self.targets = tuple(self.targets)
        bad = [t for t in self.tasks if not NAME.fullmatch(t)]
        if bad:
            raise ConfigError(f"policy.adapters.tasks: {bad[0]!r} is not a valid adapter name; use letters, digits, _ and -")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"policy.adapters.tasks lists a task twice: {list(self.tasks)}")
        if self.tasks and not self.active:
            self.active = self.tasks[-1]
        if self.active and self.active not in self.tasks:
            raise ConfigError(f"policy.adapters.active={self.active!r} is not one of policy.adapters.tasks "
                              f"{list(self.tasks)}; add it there or pick one of them")
        if self.head_init and self.head_init not in self.tasks:
            raise ConfigError(f"policy.adapters.head_init={self.head_init!r} is not one of policy.adapters.tasks "
                              f"{list(self.tasks)}")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ConfigError(f"policy.adapters.rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ConfigError(f"policy.adapters.alpha must be > 0, got {self.alpha}")
        valid = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
        wrong = [t for t in self.targets if t not in valid]
        if wrong or not self.targets:
            raise ConfigError(f"policy.adapters.targets must be a non-empty subset of {', '.join(valid)}; got "
                              f"{list(self.targets)}")

    def lora(self) -> dict[str, object]:
        """The settings a saved adapter must agree on."""
        return {"rank": self.rank, "alpha": float(self.alpha), "targets": sorted(self.targets)}


@dataclass
class TinyVLAConfig:
    """TinyVLA (Wen et al. 2024) from transformers parts with random init: a vision tower (CLIP or SigLIP)
    → MLP projector → GPTNeoX (Pythia) LLM; its pooled hidden states (+ proprio state) FiLM-condition a
    diffusion head (DDIM, ε-prediction) that denoises one action chunk.

    The defaults (~0.4 M parameters without adapters, conditional-MLP head) are sized for RL on a 2-core CPU;
    ``size: 0.4b | 0.7b | 1.3b`` selects TinyVLA-S/B/H shapes and ``head: unet`` the 1-D U-Net."""

    size: str = "tiny"
    """Model size: tiny (the fields below) or 0.4b / 0.7b / 1.3b (Pythia LLM + CLIP ViT-L/14 shapes)."""
    vision_tower: str = "clip"
    """Vision tower built from its transformers config: clip (CLIPVisionModel) or siglip (SiglipVisionModel)."""
    image_size: int = 64
    """Height and width (pixels) of the square ``image`` observations."""
    patch_size: int = 16
    """Vision patch size; the LLM sees (image_size / patch_size)² image tokens."""
    vision_hidden_size: int = 64
    """Width of the vision tower."""
    vision_layers: int = 2
    """Transformer layers in the vision tower."""
    vision_heads: int = 2
    """Attention heads in the vision tower."""
    vision_intermediate_size: int = 128
    """MLP width inside the vision tower."""
    hidden_size: int = 64
    """Width of the GPTNeoX LLM."""
    layers: int = 2
    """GPTNeoX layers."""
    heads: int = 2
    """GPTNeoX attention heads (must divide hidden_size)."""
    intermediate_size: int = 128
    """MLP width inside the GPTNeoX layers."""
    rotary_pct: float = 0.25
    """Share of each attention head's dims that get rotary embeddings (Pythia: 0.25)."""
    max_instruction_tokens: int = 48
    """Instruction length in byte tokens, BOS and EOS included; longer instructions are truncated."""
    chunk_size: int = 4
    """Actions per chunk returned by one ``act`` call (the diffusion head's horizon)."""
    action_dim: int = 4
    """Dimensions of one action (4 for the embedded tabletop env)."""
    use_state: bool = False
    """Also condition the head on ``ObsBatch.states`` (proprio), concatenated to the pooled hidden state."""
    state_dim: int = 0
    """Length of one state vector; required (>= 1) when use_state is set."""
    head: str = "mlp"
    """Denoiser: mlp (a FiLM-conditioned residual MLP, the CPU default) or unet (Diffusion Policy's 1-D U-Net)."""
    head_width: int = 128
    """Width of the MLP denoiser."""
    head_blocks: int = 3
    """FiLM residual blocks of the MLP denoiser."""
    unet_dims: tuple[int, ...] = (32, 64)
    """Channels per U-Net level; chunk_size must be divisible by 2^(levels − 1)."""
    unet_kernel: int = 3
    """Kernel size of the U-Net's 1-D convolutions (odd)."""
    unet_groups: int = 8
    """GroupNorm groups in the U-Net (must divide every entry of unet_dims)."""
    timestep_dim: int = 32
    """Size of the sinusoidal diffusion-timestep embedding."""
    train_timesteps: int = 100
    """Diffusion timesteps of the noise schedule (training samples t uniformly among them)."""
    beta_schedule: str = "squaredcos_cap_v2"
    """Noise schedule: squaredcos_cap_v2 (Diffusion Policy, TinyVLA) or linear."""
    inference_steps: int = 10
    """DDIM denoising steps per action chunk."""
    eta: float = 1.0
    """DDIM η of sampling (0 = deterministic DDIM, 1 = DDPM-like noise); greedy (temperature 0) always uses 0."""
    min_std: float = 0.05
    """Floor on each sampled step's std, in normalised action units (before the temperature scales it)."""
    rl_steps: int = 0
    """Denoising steps scored for RL: the last K of inference_steps; 0 = all of them."""
    clip_sample: bool = True
    """Clip each step's predicted clean chunk x̂₀ to the normalised range [-1, 1]."""
    action_low: tuple[float, ...] | None = None
    """Env-unit value that normalised action -1 maps to, per dim; None means all -1."""
    action_high: tuple[float, ...] | None = None
    """Env-unit value that normalised action +1 maps to, per dim; None means all +1."""
    adapters: AdaptersConfig = field(default_factory=AdaptersConfig)
    """Incremental task adapters (peft LoRA, one per task)."""
    checkpoint: str | None = field(default=None, metadata={"path": True})
    """Weights to load at construction: a directory written by ``TinyVLAPolicy.save``, or a run of the
    original TinyVLA code (its run directory or one ``checkpoint-N`` in it), which selects the original
    architecture by itself (docs/tinyvla.md, "Bring your own TinyVLA")."""
    runs: tuple[str, ...] = field(default=(), metadata={"path": True})
    """Several per-task runs of the original TinyVLA code (run or ``checkpoint-N`` directories) loaded as one
    policy with one adapter each; ``runs[i]`` is task ``adapters.tasks[i]`` (default: the run's folder name)."""
    model_base: str | None = field(default=None, metadata={"path": True})
    """The base LLaVA-Pythia directory of original runs; empty = the path recorded in the run's config.json
    (``_name_or_path``), else a ``base`` folder beside the run."""
    seed: int = 0
    """Seed of the random weight initialisation."""

    def __post_init__(self) -> None:
        if isinstance(self.adapters, dict):
            self.adapters = AdaptersConfig(**self.adapters)
        self.unet_dims = tuple(self.unet_dims)
        if self.size != "tiny":
            self._apply_size()
        positive = ("image_size", "patch_size", "vision_hidden_size", "vision_layers", "vision_heads",
                    "vision_intermediate_size", "hidden_size", "layers", "heads", "intermediate_size", "chunk_size",
                    "action_dim", "head_width", "head_blocks", "unet_kernel", "unet_groups", "timestep_dim",
                    "train_timesteps", "inference_steps")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"policy.{name} must be a positive integer, got {value!r}")
        if self.vision_tower not in VISION_TOWERS:
            raise ConfigError(f"policy.vision_tower must be one of {', '.join(VISION_TOWERS)}, got {self.vision_tower!r}")
        if self.head not in HEADS:
            raise ConfigError(f"policy.head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(f"policy.beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {self.beta_schedule!r}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"policy.image_size={self.image_size} is not a multiple of policy.patch_size="
                              f"{self.patch_size}; pick a patch size that divides it")
        for width, heads in (("vision_hidden_size", "vision_heads"), ("hidden_size", "heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ConfigError(f"policy.{width}={getattr(self, width)} must be divisible by "
                                  f"policy.{heads}={getattr(self, heads)}")
        if not 0 < self.rotary_pct <= 1 or int(self.hidden_size // self.heads * self.rotary_pct) % 2:
            raise ConfigError(f"policy.rotary_pct={self.rotary_pct} must be in (0, 1] and give an even number of "
                              f"rotary dims per head (head dim {self.hidden_size // self.heads})")
        if self.max_instruction_tokens < 3:
            raise ConfigError(f"policy.max_instruction_tokens must be >= 3, got {self.max_instruction_tokens}")
        if self.use_state and self.state_dim < 1:
            raise ConfigError("policy.use_state is true but policy.state_dim is not set; set it to the env's state length")
        if self.state_dim < 0:
            raise ConfigError(f"policy.state_dim must be >= 0, got {self.state_dim}")
        if self.head == "unet":
            levels = len(self.unet_dims)
            if levels < 1 or any(d < 1 for d in self.unet_dims):
                raise ConfigError(f"policy.unet_dims must list positive channel counts, got {list(self.unet_dims)}")
            if self.chunk_size % 2 ** (levels - 1):
                raise ConfigError(f"policy.chunk_size={self.chunk_size} must be divisible by 2^(len(unet_dims) - 1)="
                                  f"{2 ** (levels - 1)}: the U-Net halves the horizon at each level; use fewer levels")
            if any(d % self.unet_groups for d in self.unet_dims):
                raise ConfigError(f"policy.unet_groups={self.unet_groups} must divide every policy.unet_dims entry "
                                  f"{list(self.unet_dims)}")
            if self.unet_kernel % 2 == 0:
                raise ConfigError(f"policy.unet_kernel must be odd (same-length convolutions), got {self.unet_kernel}")
        if self.inference_steps > self.train_timesteps:
            raise ConfigError(f"policy.inference_steps={self.inference_steps} must be <= policy.train_timesteps="
                              f"{self.train_timesteps}")
        if not 0 <= self.rl_steps <= self.inference_steps:
            raise ConfigError(f"policy.rl_steps must be 0 (all) or 1..{self.inference_steps} (policy.inference_steps), "
                              f"got {self.rl_steps}")
        if not (math.isfinite(self.eta) and 0 <= self.eta <= 1):
            raise ConfigError(f"policy.eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {self.eta}")
        if not (math.isfinite(self.min_std) and self.min_std > 0):
            raise ConfigError(f"policy.min_std must be > 0: every sampled step needs a density (e.g. 0.05), "
                              f"got {self.min_std}")
        self.action_low = self._bounds("action_low", self.action_low, -1.0)
        self.action_high = self._bounds("action_high", self.action_high, 1.0)
        bad = [i for i, (lo, hi) in enumerate(zip(self.action_low, self.action_high)) if not lo < hi]
        if bad:
            raise ConfigError(f"policy.action_low must be < policy.action_high in every dim; not so in dims {bad}")
        if self.checkpoint is not None:
            self.checkpoint = str(self.checkpoint)
        if isinstance(self.runs, str):
            self.runs = (self.runs,)
        self.runs = tuple(str(r) for r in self.runs)
        if self.runs and self.checkpoint is not None:
            raise ConfigError("set either policy.checkpoint (one run or a saved policy) or policy.runs (several "
                              "per-task runs of the original TinyVLA), not both")
        if self.runs and self.adapters.tasks and len(self.adapters.tasks) < len(self.runs):
            raise ConfigError(f"policy.runs lists {len(self.runs)} runs but policy.adapters.tasks names only "
                              f"{len(self.adapters.tasks)} tasks; name one task per run (runs[i] is tasks[i])")

    def _apply_size(self) -> None:
        if self.size not in SIZES:
            raise ConfigError(f"policy.size must be tiny or one of {', '.join(SIZES)}, got {self.size!r}")
        preset = {**SIZES[self.size], **CLIP_L14}
        defaults = {f.name: f.default for f in fields(TinyVLAConfig) if f.name in preset}
        changed = [k for k in preset if getattr(self, k) != defaults[k] and getattr(self, k) != preset[k]]
        if changed:
            raise ConfigError(f"policy.size={self.size} fixes the model shapes, but policy.{changed[0]} is set too; "
                              f"drop it, or use size=tiny with your own shapes")
        for key, value in preset.items():
            setattr(self, key, value)

    def _bounds(self, name: str, value: object, default: float) -> tuple[float, ...]:
        if value is None:
            return (default,) * self.action_dim
        try:
            bounds = tuple(float(v) for v in value)  # type: ignore[union-attr]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"policy.{name} must be a list of {self.action_dim} numbers, got {value!r}") from exc
        if len(bounds) != self.action_dim or not all(math.isfinite(v) for v in bounds):
            raise ConfigError(f"policy.{name} must hold {self.action_dim} finite numbers (one per action dim), "
                              f"got {bounds}")
        return bounds

    @property
    def num_patches(self) -> int:
        """Image tokens (patches) per image."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def scored_steps(self) -> int:
        """K: denoising steps whose log-densities ``act`` returns (the last K)."""
        return self.rl_steps or self.inference_steps

    @property
    def num_log_probs(self) -> int:
        """T of the (B, T) contract: K scored steps × chunk_size × action_dim elements."""
        return self.scored_steps * self.chunk_size * self.action_dim

    def architecture(self) -> dict[str, object]:
        """The shape-deciding fields, for comparing a checkpoint's config with this one."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in ARCHITECTURE_FIELDS}

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)
