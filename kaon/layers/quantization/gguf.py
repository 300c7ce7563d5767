"""GGUF 4-bit blocks -> kaon's group-32 int4, without a float copy of the weights.

Block layouts (llama.cpp ``ggml-common.h``; 32 weights per block, ``qs`` holds element j in the
low nibble of byte j and element j + 16 in the high nibble, j < 16):

    Q4_0: d fp16, qs[16]          w = d * (q - 8)
    Q4_1: d fp16, m fp16, qs[16]  w = d * q + m

Both are ``scale * q + min`` with q in [0, 15] (Q4_0: scale = d, min = -8 d, exact in float32),
which is kaon's int4 layout at group size 32 (``quantization/int4.py``): the mapping is exact.
For Q4_1 ``Int4Weight.dequantize`` equals ``gguf.quants.dequantize`` bit for bit; for Q4_0 the
values are equal, but d * q + (-8 d) gives +0.0 where gguf's d * (q - 8) gives -0.0 (q = 8, d < 0).

Q8_0 (d fp16, qs int8[32], w = d * q) has one scale per 32 weights, but the int8 kernel
(``_weight_int8pack_mm``) takes one scale per output channel; kaon therefore does not map Q8_0
natively: such tensors are dequantized (exactly) and re-quantized per channel for ``int8``, which
adds that scheme's own rounding error. K-quants, F16, BF16 and F32 are dequantized and re-quantized
to the requested scheme the same way. (Under ``quantization auto``, the default, all of these
block types run natively instead, without any re-rounding: ``gguf_blocks.py``.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kaon.layers.quantization.int4 import quantize_groups

BLOCK_SIZE = 32
_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20}
NATIVE_INT4_TYPES = tuple(_BLOCK_BYTES)  # GGMLQuantizationType names mapped exactly


@dataclass
class Int4Blocks:
    """Group-32 int4 weight rows: ``q`` uint8 [N, K] in [0, 15]; ``scales``, ``mins`` float32
    [N, K / 32]; w = scales * q + mins per group."""

    q: np.ndarray
    scales: np.ndarray
    mins: np.ndarray

    def map_rows(self, fn) -> Int4Blocks:
        """Apply a row permutation ``fn`` (array [N, ...] -> [N, ...]) to every component."""
        return Int4Blocks(fn(self.q), fn(self.scales), fn(self.mins))

    @staticmethod
    def concat(parts: list[Int4Blocks | torch.Tensor]) -> Int4Blocks:
        """Stack parts along the output rows (fused q/k/v, gate/up). Float parts ([N_i, K]) are
        quantized to group-32 int4 first (a file mixing Q4_1 with other types)."""
        blocks = []
        for part in parts:
            if isinstance(part, torch.Tensor):
                q, scales, mins = quantize_groups(part, BLOCK_SIZE)
                part = Int4Blocks(q.numpy(), scales.numpy(), mins.numpy())
            blocks.append(part)
        return Int4Blocks(
            np.concatenate([b.q for b in blocks]),
            np.concatenate([b.scales for b in blocks]),
            np.concatenate([b.mins for b in blocks]),
        )

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q uint8 [N, K], scales float32 [N, K / 32], mins float32 [N, K / 32]) as torch."""
        return torch.from_numpy(self.q), torch.from_numpy(self.scales), torch.from_numpy(self.mins)


def decode_int4_blocks(data: np.ndarray, type_name: str) -> Int4Blocks:
    """Raw GGUF rows (uint8 [N, K / 32 * block_bytes]) of a Q4_0 or Q4_1 tensor -> Int4Blocks.

    Raises:
        ValueError: naming the type when it is not Q4_0 or Q4_1.
    """
    if type_name not in _BLOCK_BYTES:
        raise ValueError(f"GGUF type {type_name} has no exact int4 mapping")
    rows = data.shape[0]
    blocks = np.ascontiguousarray(data).reshape(rows, -1, _BLOCK_BYTES[type_name])
    scales = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if type_name == "Q4_1":
        mins = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        qs = blocks[..., 4:]
    else:
        mins = scales * np.float32(-8.0)
        qs = blocks[..., 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # [N, G, 32]: element j, then j + 16
    return Int4Blocks(q.reshape(rows, -1), scales, mins)
