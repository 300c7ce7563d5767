"""Structured outputs in the sampler: mask the logits of the rows that have a grammar."""

from __future__ import annotations

import numpy as np
import torch

_BITS = 32  # tokens per bitmask word


def apply_token_bitmask(
    logits: torch.Tensor, rows: torch.Tensor, bitmask: torch.Tensor
) -> torch.Tensor:
    """Set to -inf the logits of tokens a row's grammar does not allow.

    logits: [batch, vocab] (modified in place and returned); rows: [num_constrained] int64, the
    logits rows that have a grammar; bitmask: [num_constrained, cdiv(vocab, 32)] int32 on the
    same device, bit ``i % 32`` of word ``i // 32`` set when token ``i`` is allowed (llguidance's
    layout). Rows not listed are not touched, so their sampling is bit-identical to a batch
    without constrained rows. Ids past the bitmask's width are disallowed.
    """
    vocab_size = logits.shape[1]
    allowed = _unpack(bitmask)  # [rows, words * 32] bool
    if allowed.shape[1] < vocab_size:
        allowed = torch.nn.functional.pad(allowed, (0, vocab_size - allowed.shape[1]))
    allowed = allowed[:, :vocab_size]
    logits[rows] = logits[rows].masked_fill(~allowed, float("-inf"))
    return logits


def _unpack(bitmask: torch.Tensor) -> torch.Tensor:
    """[rows, words] int32 -> [rows, words * 32] bool, token i at column i."""
    if bitmask.device.type == "cpu":
        # numpy's unpackbits is ~4x faster than shifting on the CPU; bytes are little-endian.
        bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")
        return torch.from_numpy(bits).bool()
    shifts = torch.arange(_BITS, dtype=torch.int32, device=bitmask.device)
    return ((bitmask.unsqueeze(-1) >> shifts) & 1).bool().flatten(1)  # [rows, words * 32]
