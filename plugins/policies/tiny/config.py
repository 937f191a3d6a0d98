"""Configuration of the tiny VLA policy (``policy.type: tiny``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


from pushcut.errors import ConfigError

ARCHITECTURE_FIELDS = (
    "image_size", "patch_size", "vision_hidden_size", "vision_layers", "vision_heads", "vision_intermediate_size",
    "hidden_size", "layers", "heads", "intermediate_size", "max_instruction_tokens", "text_patch_size",
    "chunk_size", "action_dim",
    "n_bins", "use_state", "state_dim", "use_wrist_image",
)
"""Fields that decide tensor shapes; a checkpoint only loads into a config that agrees on all of them."""


@dataclass
class TinyTokenVLAConfig:
    """A small VLA built from transformers parts with random init: SigLIP-style
    vision encoder → MLP projector → Llama-style decoder, OpenVLA-OFT-style
    parallel action decoding over 256 bins per action element.

    The defaults (~0.26 M parameters) are sized for RL on a 2-core CPU: act() at
    batch 64 in a few tens of ms, an RL train step at batch 64 around 0.1 s."""

    image_size: int = 64
    """Height and width (pixels) of the square ``image`` (and ``wrist_image``) observations."""
    patch_size: int = 16
    """Vision patch size in pixels; the decoder sees (image_size / patch_size)² tokens per image."""
    vision_hidden_size: int = 64
    """Width of the vision encoder."""
    vision_layers: int = 2
    """Transformer layers in the vision encoder."""
    vision_heads: int = 2
    """Attention heads in the vision encoder (must divide vision_hidden_size)."""
    vision_intermediate_size: int = 128
    """MLP width inside the vision encoder."""
    hidden_size: int = 64
    """Width of the Llama-style decoder."""
    layers: int = 2
    """Decoder layers."""
    heads: int = 2
    """Decoder attention heads (must divide hidden_size)."""
    intermediate_size: int = 128
    """Gated-MLP width inside the decoder."""
    max_instruction_tokens: int = 64
    """Instruction length in byte tokens, BOS and EOS included; longer instructions are truncated."""
    text_patch_size: int = 4
    """Consecutive byte tokens merged into one decoder token by a linear layer (1: one token per byte).
    Bytes make long sequences; merging 4 keeps the decoder cheap enough for CPU RL."""
    chunk_size: int = 4
    """Actions per chunk returned by one ``act`` call."""
    action_dim: int = 4
    """Dimensions of one action (4 for the embedded tabletop env: dx, dy, dz, gripper)."""
    n_bins: int = 256
    """Discretisation bins per action element over the normalised range [-1, 1] (OpenVLA: 256)."""
    bin_smoothing: float = 0.0
    """Std, in bins, of a fixed Gaussian that blurs the action logits across neighbouring bins; 0 keeps bins independent.

    OpenVLA's bins are independent classes: raising bin 140 tells bin 141 nothing. With a
    blur, an update to one bin moves its neighbours too, as a continuous policy would."""
    use_state: bool = False
    """Feed ``ObsBatch.states`` to the decoder as one proprio token."""
    state_dim: int = 0
    """Length of one state vector; required (>= 1) when use_state is set."""
    use_wrist_image: bool = False
    """Also encode ``ObsBatch.wrist_images`` (same vision encoder, own view embedding)."""
    action_low: tuple[float, ...] | None = None
    """Env-unit value that normalised action -1 maps to, per dim; None means all -1."""
    action_high: tuple[float, ...] | None = None
    """Env-unit value that normalised action +1 maps to, per dim; None means all +1."""
    value_detach: bool = True
    """The value head (PPO's critic, algo.advantage=gae) reads the pooled hidden state detached.

    The value loss then trains the head alone and never moves the actor's weights."""
    checkpoint: str | None = None
    """Directory written by ``TinyTokenVLA.save`` to load weights from at construction."""
    seed: int = 0
    """Seed of the random weight initialisation."""

    def __post_init__(self) -> None:
        positive = ("image_size", "patch_size", "vision_hidden_size", "vision_layers", "vision_heads",
                    "vision_intermediate_size", "hidden_size", "layers", "heads", "intermediate_size",
                    "text_patch_size", "chunk_size", "action_dim")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"policy.{name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"policy.image_size={self.image_size} is not a multiple of policy.patch_size={self.patch_size}; "
                f"use a patch size that divides it, e.g. {self._divisor_hint()}"
            )
        for width, heads in (("vision_hidden_size", "vision_heads"), ("hidden_size", "heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ConfigError(
                    f"policy.{width}={getattr(self, width)} must be divisible by policy.{heads}={getattr(self, heads)}"
                )
        if self.hidden_size // self.heads % 2:
            raise ConfigError(
                f"policy.hidden_size / policy.heads = {self.hidden_size // self.heads} must be even (rotary embedding)"
            )
        if self.max_instruction_tokens < 3:
            raise ConfigError(
                "policy.max_instruction_tokens must be >= 3 (BOS, at least one byte, EOS), "
                f"got {self.max_instruction_tokens}"
            )
        if self.n_bins < 2:
            raise ConfigError(f"policy.n_bins must be >= 2, got {self.n_bins}")
        if not 0.0 <= self.bin_smoothing <= self.n_bins / 4:
            raise ConfigError(
                f"policy.bin_smoothing must be 0 (off) or a std in bins up to n_bins/4={self.n_bins / 4:g}, "
                f"got {self.bin_smoothing}"
            )
        if self.use_state and self.state_dim < 1:
            raise ConfigError(
                "policy.use_state is true but policy.state_dim is not set; set it to the env's state length"
            )
        if self.state_dim < 0:
            raise ConfigError(f"policy.state_dim must be >= 0, got {self.state_dim}")
        self.action_low = self._bounds("action_low", self.action_low, -1.0)
        self.action_high = self._bounds("action_high", self.action_high, 1.0)
        bad = [i for i, (lo, hi) in enumerate(zip(self.action_low, self.action_high)) if not lo < hi]
        if bad:
            raise ConfigError(f"policy.action_low must be < policy.action_high in every dim; not so in dims {bad}")
        if self.checkpoint is not None:
            self.checkpoint = str(self.checkpoint)

    def _bounds(self, name: str, value: object, default: float) -> tuple[float, ...]:
        if value is None:
            return (default,) * self.action_dim
        try:
            bounds = tuple(float(v) for v in value)  # type: ignore[union-attr]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"policy.{name} must be a list of {self.action_dim} numbers, got {value!r}") from exc
        if len(bounds) != self.action_dim:
            raise ConfigError(
                f"policy.{name} has {len(bounds)} entries but policy.action_dim={self.action_dim}; "
                f"give one bound per action dim (e.g. from the env's ActionSpec)"
            )
        if not all(math.isfinite(v) for v in bounds):
            raise ConfigError(f"policy.{name} must be finite, got {bounds}")
        return bounds

    def _divisor_hint(self) -> int:
        return max(d for d in range(1, min(self.patch_size, self.image_size) + 1) if self.image_size % d == 0)

    @property
    def num_patches(self) -> int:
        """Vision tokens per image."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_action_tokens(self) -> int:
        """T: action elements scored per chunk (chunk_size × action_dim)."""
        return self.chunk_size * self.action_dim

    def architecture(self) -> dict[str, object]:
        """The shape-deciding fields, for comparing a checkpoint's config with this one."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in ARCHITECTURE_FIELDS}
