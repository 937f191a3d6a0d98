"""Byte-level instruction tokenizer: UTF-8 bytes plus three specials, nothing to download."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3
"""Token id of byte value 0; byte ``b`` is token ``b + BYTE_OFFSET``."""
VOCAB_SIZE = BYTE_OFFSET + 256


class ByteTokenizer:
    """``"pick"`` → ``[BOS, p+3, i+3, c+3, k+3, EOS]``, truncated to ``max_length`` tokens.

    Truncation keeps BOS and EOS and drops trailing bytes, so the decoder always
    sees where the instruction ends.
    """

    vocab_size = VOCAB_SIZE
    pad_id = PAD_ID

    def __init__(self, max_length: int) -> None:
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 (BOS, one byte, EOS), got {max_length}")
        self.max_length = max_length
        # Rollouts repeat the same few instructions thousands of times; cache per string.
        self._encode = lru_cache(maxsize=4096)(self._encode_uncached)

    def _encode_uncached(self, text: str) -> tuple[int, ...]:
        data = text.encode("utf-8")[: self.max_length - 2]
        return (BOS_ID, *(b + BYTE_OFFSET for b in data), EOS_ID)

    def encode(self, text: str) -> list[int]:
        """Token ids of one instruction, BOS and EOS included."""
        return list(self._encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        """Inverse of :meth:`encode` (specials dropped; truncated multi-byte characters replaced)."""
        data = bytes(i - BYTE_OFFSET for i in ids if i >= BYTE_OFFSET)
        return data.decode("utf-8", errors="replace")

    def batch(
        self, texts: Sequence[str], device: torch.device | str = "cpu", multiple_of: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids (B, L) int64 and validity mask (B, L) bool, L = longest in the batch
        rounded up to a multiple of ``multiple_of``.

        Left padding puts every instruction's EOS right before the action block,
        so (with pad-skipping position ids) a row's result does not depend on
        what else is in the batch; groups of ``multiple_of`` ids counted from the
        right are likewise the same whatever the batch.
        """
        encoded = [self._encode(t) for t in texts]
        length = -(-max(len(e) for e in encoded) // multiple_of) * multiple_of
        ids = torch.full((len(encoded), length), PAD_ID, dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, length - len(e):] = torch.tensor(e, dtype=torch.long)
        ids = ids.to(device)
        return ids, ids != PAD_ID
