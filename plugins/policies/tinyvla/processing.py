"""Inputs of the TinyVLA policy: byte-level instruction tokens and normalised pixels.

Nothing to download: instructions are UTF-8 bytes (plus PAD / BOS / EOS), images are
scaled with the vision tower's own mean and std (CLIP's or SigLIP's).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
BYTE_OFFSET = 3
VOCAB_SIZE = BYTE_OFFSET + 256

IMAGE_MEAN = {"clip": (0.48145466, 0.4578275, 0.40821073), "siglip": (0.5, 0.5, 0.5)}
IMAGE_STD = {"clip": (0.26862954, 0.26130258, 0.27577711), "siglip": (0.5, 0.5, 0.5)}
"""Per-channel normalisation the published CLIP / SigLIP image processors use."""


@lru_cache(maxsize=4096)
def encode(text: str, max_length: int) -> tuple[int, ...]:
    """``BOS, bytes…, EOS`` of one instruction, its bytes truncated to fit ``max_length`` tokens."""
    data = text.encode("utf-8")[: max_length - 2]
    return (BOS_ID, *(b + BYTE_OFFSET for b in data), EOS_ID)


def instruction_batch(texts: Sequence[str], max_length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, L) int64 and validity (B, L) bool, L = the longest instruction in the batch.

    Pad tokens are masked as keys and excluded from pooling, so a row's result does not depend
    on how long the other instructions of its batch are."""
    encoded = [encode(t, max_length) for t in texts]
    length = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), length), PAD_ID, dtype=torch.long)
    for row, e in enumerate(encoded):
        ids[row, : len(e)] = torch.tensor(e, dtype=torch.long)
    ids = ids.to(device)
    return ids, ids != PAD_ID


def pixels(images: np.ndarray, tower: str, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float32, normalised with the tower's mean and std."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN[tower], device=device)
    std = torch.tensor(IMAGE_STD[tower], device=device)
    return ((x - mean) / std).permute(0, 3, 1, 2)
