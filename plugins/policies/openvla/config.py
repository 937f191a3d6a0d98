"""Configuration of the OpenVLA / OpenVLA-OFT policy (``policy.type: openvla``)."""

from __future__ import annotations

from dataclasses import dataclass, field


from pushcut.errors import ConfigError

MODES = ("parallel", "autoregressive")
NORMALIZATIONS = ("q99", "minmax")
DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")
LORA_TARGETS_DEFAULT = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class OpenVLAConfig:
    """OpenVLA / OpenVLA-OFT loaded from a checkpoint in the Hugging Face "prismatic" layout
    (``config.json`` with ``norm_stats``, ``model*.safetensors``, ``tokenizer.model``).

    ``mode: parallel`` is the OpenVLA-OFT / SimpleVLA-RL decoding (chunk × action_dim
    discrete action tokens in one forward pass); ``mode: autoregressive`` is the original
    OpenVLA (action_dim tokens per step, one action per chunk)."""

    checkpoint: str | None = field(default=None, metadata={"path": True})
    """Directory of the checkpoint (required): the original layout, or one written by this policy's save."""
    unnorm_key: str | None = None
    """Entry of the checkpoint's ``norm_stats`` that un-normalises actions (e.g. libero_10_no_noops).

    May be left unset when the checkpoint has exactly one."""
    normalization: str = "q99"
    """How normalised actions map to env units: q99 (LIBERO, Bridge) or minmax (ALOHA, RoboTwin).

    q99 uses the checkpoint's q01/q99 bounds, minmax its min/max bounds."""
    mode: str = "parallel"
    """Decoding: parallel (OFT / SimpleVLA-RL) or autoregressive (original OpenVLA).

    parallel decodes all chunk × action_dim tokens in one pass; autoregressive decodes one
    action of action_dim tokens per step."""
    chunk_size: int | None = None
    """Actions per chunk (OFT: 8 for LIBERO, 25 for ALOHA/RoboTwin; None = the mode's default).

    None means 8 in parallel mode and 1 in autoregressive mode (the only value it allows)."""
    action_dim: int | None = None
    """Dimensions of one action; None takes it from the checkpoint's norm_stats (and a mismatch is an error)."""
    vision_heads: tuple[int, ...] | None = None
    """Attention heads per vision tower (timm_model_ids order), needed only for a timm id pushcut does not know.

    A head count cannot be read from the weights; the known ids (DINOv2-L, SigLIP so400m) need nothing."""
    num_images: int = 1
    """Images per observation: 1 (ObsBatch.images) or 2 (also ObsBatch.wrist_images, OFT multi-image)."""
    use_proprio: bool | None = None
    """Feed ObsBatch.states through the proprio projector (OFT); None: on when the checkpoint has one."""
    center_crop: bool = False
    """Crop the central 90% of the image area and resize back, as SimpleVLA-RL's rollouts do.

    Set it for checkpoints trained with random-crop augmentation, e.g. its LIBERO SFT models."""
    restrict_to_action_tokens: bool = True
    """Sample only among the n_action_bins action token ids (SimpleVLA-RL).

    False samples over the whole vocabulary as the original OpenVLA generate() does
    (non-action ids decode to the nearest edge bin)."""
    dtype: str = "auto"
    """Weights and compute dtype: auto (the checkpoint's own dtype), bfloat16, float16 or float32."""
    attn_implementation: str = "auto"
    """Language-model attention: auto (sdpa), sdpa, eager, or flash_attention_2 (autoregressive only).

    flash_attention_2 needs the flash-attn package; parallel decoding needs a custom mask
    that flash-attn cannot take."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (language model and vision towers): less memory, ~30% slower."""
    freeze_vision: bool = False
    """Keep both vision towers frozen (no gradients, not in trainable_parameters)."""
    lora_rank: int = 0
    """LoRA rank for the language model's linear layers (peft); 0 trains all weights."""
    lora_alpha: float | None = None
    """LoRA scaling numerator; None means 2 × lora_rank."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path (keep 0 for RL: act() and log_probs() must agree)."""
    lora_targets: tuple[str, ...] = LORA_TARGETS_DEFAULT
    """Names of the language-model linear layers that get LoRA adapters."""
    save_merged: bool = False
    """With LoRA: save() merges the adapters into the weights (a plain checkpoint the original code loads)
    instead of writing base weights plus a separate adapter file."""

    def __post_init__(self) -> None:
        # A missing checkpoint is reported when the policy is built (require_checkpoint), so configs
        # with `checkpoint: null` still resolve for `pushcut config show` and can be completed by overrides.
        if self.checkpoint is not None:
            self.checkpoint = str(self.checkpoint)
        for name, allowed in (("mode", MODES), ("normalization", NORMALIZATIONS), ("dtype", DTYPES),
                              ("attn_implementation", ATTENTION)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"policy.{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.chunk_size is None:
            self.chunk_size = 8 if self.mode == "parallel" else 1
        for name in ("chunk_size", "num_images"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"policy.{name} must be a positive integer, got {value!r}")
        if self.num_images > 2:
            raise ConfigError(
                f"policy.num_images={self.num_images}: observations carry at most 2 images (image, wrist_image)"
            )
        if self.vision_heads is not None:
            self.vision_heads = tuple(self.vision_heads)
            if not self.vision_heads or any(not isinstance(h, int) or isinstance(h, bool) or h < 1
                                            for h in self.vision_heads):
                raise ConfigError(
                    f"policy.vision_heads must be a list of positive integers, one per vision tower, got "
                    f"{list(self.vision_heads)!r}"
                )
        if self.action_dim is not None and self.action_dim < 1:
            raise ConfigError(f"policy.action_dim must be >= 1 (or unset), got {self.action_dim}")
        if self.mode == "autoregressive" and self.chunk_size != 1:
            raise ConfigError(
                f"policy.chunk_size={self.chunk_size} but autoregressive OpenVLA predicts 1 action per step; "
                "set policy.chunk_size=1, or policy.mode=parallel for chunks"
            )
        if self.mode == "parallel" and self.attn_implementation == "flash_attention_2":
            raise ConfigError(
                "policy.attn_implementation=flash_attention_2 cannot take the parallel-decoding attention mask; "
                "use sdpa (or mode=autoregressive)"
            )
        if self.lora_rank < 0:
            raise ConfigError(f"policy.lora_rank must be >= 0 (0 = no LoRA), got {self.lora_rank}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"policy.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        self.lora_targets = tuple(self.lora_targets)
        if self.lora_rank and not self.lora_targets:
            raise ConfigError("policy.lora_targets is empty: name the linear layers that get adapters, e.g. q_proj")

    def require_checkpoint(self) -> str:
        """The checkpoint directory, or a ConfigError saying how to give one."""
        if self.checkpoint is None or not self.checkpoint.strip():
            raise ConfigError(
                "policy.checkpoint is required for policy.type=openvla: set it to a checkpoint directory in the "
                "Hugging Face prismatic layout (config.json, model*.safetensors, tokenizer.model)"
            )
        return self.checkpoint
