"""Inputs as OpenVLA sees them: the prompt, its token ids, and the fused-backbone pixel values.

* Prompt: ``"In: What action should the robot take to {instruction.lower()}?\\nOut:"`` (OpenVLA's
  and SimpleVLA-RL's rollouts lower-case the instruction), tokenised with the checkpoint's own
  SentencePiece model (``tokenizer.model``) with BOS in front; if the last id is not **29871** it
  is appended. That literal id is what the original ``predict_action`` and SimpleVLA-RL's rollout
  append (it is Llama-2's "▁" piece); they do not look the piece up, so with any other vocabulary
  (e.g. Mistral's, whose "▁" is 28705) the original still appends 29871, and so does pushcut.
* Pixels: per vision tower, resize to its input size (PIL bicubic, only when the size differs),
  scale to [0, 1] and normalise with that tower's mean/std (``preprocessor_config.json``, else
  DINOv2 = ImageNet, SigLIP = 0.5/0.5); towers are stacked along channels (DINOv2 first), images
  one after another — the (B, 6 × images, H, W) layout of the original model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import sentencepiece
import torch
from PIL import Image

from pushcut.errors import CheckpointError

PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
TOKENIZER_FILE = "tokenizer.model"
PREPROCESSOR_FILE = "preprocessor_config.json"
APPENDED_ID = 29871
"""The id OpenVLA appends to every prompt that does not end in it (Llama-2's "▁"), literally."""
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
CENTER_CROP_AREA = 0.9


def build_prompt(instruction: str) -> str:
    """The OpenVLA prompt for one instruction."""
    return PROMPT_TEMPLATE.format(instruction=instruction.lower())


class PromptTokenizer:
    """The checkpoint's SentencePiece tokenizer (what its ``tokenizer.model`` holds), for prompts."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(
                f"{path.parent} has no {TOKENIZER_FILE}: OpenVLA checkpoints ship their Llama-2 SentencePiece "
                "tokenizer; copy tokenizer.model from the checkpoint you fine-tuned from"
            )
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = int(self.sp.vocab_size())
        self.bos_id = int(self.sp.bos_id())
        self.eos_id = int(self.sp.eos_id())
        if self.bos_id < 0 or self.eos_id < 0:
            raise CheckpointError(f"{path}: the tokenizer defines no BOS/EOS pieces; not a Llama-style tokenizer")
        # act() and log_probs() see the same few instructions thousands of times: encode each once.
        self._prompt_ids = lru_cache(maxsize=4096)(self._prompt_ids_uncached)

    def prompt_ids(self, instruction: str) -> list[int]:
        """BOS + the prompt + 29871 (unless the prompt already ends in it), as the original does."""
        return list(self._prompt_ids(instruction))

    def _prompt_ids_uncached(self, instruction: str) -> tuple[int, ...]:
        ids = [self.bos_id, *self.sp.encode(build_prompt(instruction))]
        if ids[-1] != APPENDED_ID:
            ids.append(APPENDED_ID)
        return tuple(ids)


@dataclass(frozen=True)
class TowerTransform:
    """One tower's image transform (the functional form of OpenVLA's processor)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class ImageProcessor:
    """uint8 images → the fused backbone's channel-stacked pixel values."""

    def __init__(self, transforms: Sequence[TowerTransform], resize_strategy: str = "resize-naive",
                 center_crop: bool = False) -> None:
        if resize_strategy not in ("resize-naive", "letterbox"):
            raise CheckpointError(
                f"image_resize_strategy {resize_strategy!r} is not supported (resize-naive, letterbox)"
            )
        sizes = {t.size for t in transforms}
        if len(sizes) != 1:
            raise CheckpointError(f"vision towers with different input sizes {sorted(sizes)} are not supported")
        self.transforms = list(transforms)
        self.size = sizes.pop()
        self.resize_strategy = resize_strategy
        self.center_crop = center_crop
        self._mean = torch.tensor([c for t in self.transforms for c in t.mean]).view(-1, 1, 1)
        self._std = torch.tensor([c for t in self.transforms for c in t.std]).view(-1, 1, 1)

    @classmethod
    def from_checkpoint(cls, directory: Path, towers: Sequence[str], image_sizes: Sequence[int],
                        resize_strategy: str, center_crop: bool) -> ImageProcessor:
        """From ``preprocessor_config.json`` when present, else each tower's standard normalisation."""
        path = Path(directory) / PREPROCESSOR_FILE
        if path.is_file():
            pre = json.loads(path.read_text())
            means, stds = pre.get("means"), pre.get("stds")
            sizes = [int(s[-1]) for s in pre.get("input_sizes", [])] or list(image_sizes)
            resize_strategy = pre.get("image_resize_strategy", resize_strategy)
        else:
            means = [IMAGENET_MEAN if kind == "dinov2" else SIGLIP_MEAN for kind in towers]
            stds = [IMAGENET_STD if kind == "dinov2" else SIGLIP_STD for kind in towers]
            sizes = list(image_sizes)
        if not means or len(means) != len(towers) or len(stds) != len(towers) or len(sizes) != len(towers):
            raise CheckpointError(f"{path}: needs one mean, std and input size per vision tower ({len(towers)})")
        transforms = [TowerTransform(int(s), tuple(m), tuple(d)) for s, m, d in zip(sizes, means, stds)]
        return cls(transforms, resize_strategy, center_crop)

    def _resize(self, image: np.ndarray) -> np.ndarray:
        pil = Image.fromarray(image)
        if self.resize_strategy == "letterbox":
            w, h = pil.size
            side = max(w, h)
            fill = tuple(int(x * 255) for x in self.transforms[0].mean)
            canvas = Image.new("RGB", (side, side), fill)
            canvas.paste(pil, (int((side - w) / 2), int((side - h) / 2)))
            pil = canvas
        if pil.size != (self.size, self.size):
            pil = pil.resize((self.size, self.size), Image.BICUBIC)
        return np.asarray(pil)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 → (B, 3 × towers, size, size) float32."""
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be (B, H, W, 3) uint8, got {images.shape} {images.dtype}")
        writable = images.flags.writeable and images.flags.c_contiguous
        x = torch.from_numpy(images if writable else np.array(images))
        if self.center_crop:
            x = center_crop(x)
        if tuple(x.shape[1:3]) != (self.size, self.size) or self.resize_strategy == "letterbox":
            x = torch.from_numpy(np.stack([self._resize(img) for img in x.numpy()]))
        x = x.permute(0, 3, 1, 2).float().div(255)  # torchvision's to_tensor
        n = len(self.transforms)
        return (x.repeat(1, n, 1, 1) - self._mean) / self._std


def center_crop(images: torch.Tensor, area: float = CENTER_CROP_AREA) -> torch.Tensor:
    """SimpleVLA-RL's test-time crop: the central ``area`` of each (H, W, 3) uint8 image, resized
    bilinearly back to (H, W) with TF ``crop_and_resize`` sampling (corner-aligned), then rounded
    back to uint8 as TF's ``convert_image_dtype`` does. Re-implemented; not compared against TF here."""
    b, h, w, _ = images.shape
    side = min(max(math.sqrt(area), 0.0), 1.0)
    off = (1.0 - side) / 2.0
    x = images.float() * (1.0 / 255.0)

    def coords(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i = torch.arange(n, dtype=torch.float32)
        pos = off * (n - 1) + i * (side * (n - 1) / (n - 1))
        lo = pos.floor().clamp(0, n - 1)
        hi = pos.ceil().clamp(0, n - 1)
        return lo.long(), hi.long(), pos - lo

    y0, y1, fy = coords(h)
    x0, x1, fx = coords(w)
    fx = fx.view(1, 1, -1, 1)
    fy = fy.view(1, -1, 1, 1)
    rows0, rows1 = x[:, y0], x[:, y1]
    top_left, bottom_left = rows0[:, :, x0], rows1[:, :, x0]
    top = top_left + (rows0[:, :, x1] - top_left) * fx
    bottom = bottom_left + (rows1[:, :, x1] - bottom_left) * fx
    out = (top + (bottom - top) * fy).clamp(0.0, 1.0)
    return (out * 255.5).clamp(0, 255).to(torch.uint8)


def normalize_proprio(states: np.ndarray, low: Sequence[float], high: Sequence[float],
                      mask: Sequence[bool] | None = None) -> np.ndarray:
    """OpenVLA-OFT's proprio normalisation: ``clip(2 (s - low) / (high - low + 1e-8) - 1, -1, 1)``
    where ``mask`` is True, the raw value elsewhere (then clipped too)."""
    s = np.asarray(states, dtype=np.float64)
    lo, hi = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    m = np.ones(lo.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    return np.clip(np.where(m, 2 * (s - lo) / (hi - lo + 1e-8) - 1, s), -1, 1)
