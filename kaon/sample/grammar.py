"""Structured outputs in the sampler: mask the logits of the rows that have a grammar.

On the CPU the mask is applied with numpy on views of the constrained logits rows: one
single-threaded pass per row. torch's ``masked_fill_`` over a 49,152-token row is large enough
to run as an OpenMP parallel region, and on a machine whose cores are all busy such a region
waits for a descheduled worker: 2-12 ms instead of ~0.1 ms (measured on 2 shared cores, see
BENCHMARKS.md, "Structured outputs").
"""

from __future__ import annotations

import numpy as np
import torch

_BITS = 32  # tokens per bitmask word
# numpy has no bfloat16: the logits are written through an integer view of the same width.
_SAME_WIDTH_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def apply_token_bitmask(
    logits: torch.Tensor, rows: torch.Tensor, bitmask: torch.Tensor
) -> torch.Tensor:
    """Set to -inf the logits of tokens a row's grammar does not allow.

    logits: [batch, vocab] (modified in place and returned); rows: [num_constrained] int64,
    ascending, the logits rows that have a grammar; bitmask: [num_constrained, cdiv(vocab, 32)]
    int32 on the same device, bit ``i % 32`` of word ``i // 32`` set when token ``i`` is allowed
    (llguidance's layout). Rows not listed are not touched, so their sampling is bit-identical
    to a batch without constrained rows. Ids past the bitmask's width are disallowed.
    """
    if logits.device.type == "cpu" and bitmask.device.type == "cpu":
        _apply_on_cpu(logits, rows.tolist(), bitmask.numpy())
        return logits
    vocab_size = logits.shape[1]
    bits = _unpack(bitmask)  # [rows, words * 32] uint8, 1 = allowed
    if bits.shape[1] < vocab_size:
        bits = torch.nn.functional.pad(bits, (0, vocab_size - bits.shape[1]))
    disallowed = bits[:, :vocab_size] == 0  # [rows, vocab] bool
    if rows.numel() == logits.shape[0]:  # every row constrained (rows are in order)
        return logits.masked_fill_(disallowed, float("-inf"))
    constrained = logits[rows]  # [rows, vocab], a copy
    logits[rows] = constrained.masked_fill_(disallowed, float("-inf"))
    return logits


def _apply_on_cpu(logits: torch.Tensor, rows: list[int], words: np.ndarray) -> None:
    """``apply_token_bitmask`` in place with numpy; words [len(rows), num_words] int32."""
    int_dtype = _SAME_WIDTH_INT[logits.element_size()]
    values = logits.view(int_dtype).numpy()  # [batch, vocab], shares logits' memory
    # -inf's bit pattern in logits' dtype, so the written values equal masked_fill_'s.
    fill = np.array(torch.full((), float("-inf"), dtype=logits.dtype).view(int_dtype).item())
    fill = fill.astype(values.dtype)
    width = min(values.shape[1], words.shape[1] * _BITS)  # tokens the bitmask covers
    # Inverted words unpack to 1 = disallowed; bytes are little-endian (x86, ARM).
    if rows == list(range(values.shape[0])):  # every row: one pass over the batch
        disallowed = np.unpackbits(
            (~words).view(np.uint8), axis=1, count=width, bitorder="little"
        ).view(bool)  # [batch, width]
        np.copyto(values[:, :width], fill, where=disallowed)
        values[:, width:] = fill
        return
    for index, row in enumerate(rows):
        disallowed = np.unpackbits(
            (~words[index]).view(np.uint8), count=width, bitorder="little"
        ).view(bool)  # [width]
        np.copyto(values[row, :width], fill, where=disallowed)
        values[row, width:] = fill


def _unpack(bitmask: torch.Tensor) -> torch.Tensor:
    """[rows, words] int32 -> [rows, words * 32] uint8 (1 = allowed), token i at column i."""
    shifts = torch.arange(_BITS, dtype=torch.int32, device=bitmask.device)
    return ((bitmask.unsqueeze(-1) >> shifts) & 1).to(torch.uint8).flatten(1)
