"""GGUF block-quantized weights kept as they are in the file, multiplied by C++ kernels.

A ``GGUFBlockWeight`` holds a linear weight of logical shape ``[out_features, in_features]`` as
the raw bytes of its GGUF tensor: uint8 ``[N, K / block * block_bytes]``, one row per output
feature, the blocks of that row in order (layouts and kernels: ``kaon/kernels/gguf_matmul.py``,
source llama.cpp ``ggml/src/ggml-common.h``). Types with a kernel: ``KERNEL_TYPES`` (Q4_0, Q4_1,
Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K); the loader dequantizes every other type (one log line per
type naming it and its tensor count).

Fused weights (qkv, gate_up) are made of parts stacked along the output rows. Parts of one type
are concatenated into one block tensor; a weight whose parts have different types (Gemma 3's
Q4_K_M: q/k Q5_0 but v Q8_0 in some layers) keeps one *segment* per run of equal types, and
``linear`` runs one kernel per segment, each writing its column slice of one output tensor
(each segment quantizes the activations itself; the result equals separate products).

The same class serves as a block-quantized embedding table (``embedding`` dequantizes only the
requested rows) and, for a tied LM head, as the head (``linear``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kaon.kernels.gguf_matmul import KERNEL_TYPES, loaded_kernels
from kaon.layers.quantization.base import QuantizedWeight

# Tests set this to False to run the scalar twin of the AVX2 kernels.
USE_SIMD = True


@dataclass
class GGUFBlocks:
    """One GGUF tensor's rows as loaded: ``data`` uint8 [N, row_bytes] (the file's bytes, rows
    possibly permuted), ``type_name`` a ``KERNEL_TYPES`` key, ``in_features`` K."""

    type_name: str
    data: np.ndarray
    in_features: int

    def map_rows(self, fn) -> GGUFBlocks:
        """Apply a row permutation ``fn`` (array [N, ...] -> [N, ...]) to the block rows."""
        return GGUFBlocks(self.type_name, np.ascontiguousarray(fn(self.data)), self.in_features)

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K] through ``gguf.quants.dequantize`` (the reference)."""
        from gguf.quants import GGMLQuantizationType, dequantize

        values = dequantize(self.data, GGMLQuantizationType[self.type_name])
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(
            self.data.shape[0], self.in_features
        )


class GGUFBlockWeight(QuantizedWeight):
    """A linear weight (or embedding table) of logical shape ``[out_features, in_features]``
    stored as GGUF blocks.

    Buffers ``blocks_0``, ``blocks_1``, ... uint8 [N_i, row_bytes_i], one per segment of one
    type; ``segments`` lists (type name, type id, first output row, number of rows). A segment
    of one part whose array is writable, contiguous uint8 keeps that array (shares its memory).

    Raises:
        ValueError: a type without a kernel, parts with different ``in_features``, or a row
            byte count that does not match the type.
    """

    def __init__(self, parts: list[GGUFBlocks]) -> None:
        super().__init__()
        if not parts:
            raise ValueError("a GGUF block weight needs at least one part")
        self.in_features = parts[0].in_features
        runs: list[list[GGUFBlocks]] = []
        for part in parts:
            if part.type_name not in KERNEL_TYPES:
                raise ValueError(f"GGUF type {part.type_name} has no kernel")
            if part.in_features != self.in_features:
                raise ValueError("fused GGUF parts must have the same in_features")
            _, block, block_bytes = KERNEL_TYPES[part.type_name]
            if part.data.shape[1] != part.in_features // block * block_bytes:
                raise ValueError(f"{part.type_name} rows of {part.data.shape[1]} bytes do not "
                                 f"hold {part.in_features} weights")  # fmt: skip
            if runs and runs[-1][0].type_name == part.type_name:
                runs[-1].append(part)
            else:
                runs.append([part])
        self.segments: list[tuple[str, int, int, int]] = []
        start = 0
        for index, run in enumerate(runs):
            data = np.concatenate([p.data for p in run]) if len(run) > 1 else run[0].data
            if not (data.flags.writeable and data.flags.c_contiguous and data.dtype == np.uint8):
                data = np.array(data, np.uint8)  # e.g. a read-only view of a mapped file
            self.register_buffer(f"blocks_{index}", torch.from_numpy(data))
            type_name = run[0].type_name
            self.segments.append((type_name, KERNEL_TYPES[type_name][0], start, len(data)))
            start += len(data)
        self.out_features = start
        self.embedding_dtype = torch.float32  # of ``embedding``'s rows (the activation dtype)

    def _blocks(self, index: int) -> torch.Tensor:
        return getattr(self, f"blocks_{index}")

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] (``gguf.quants.dequantize``; tests and fallbacks)."""
        return torch.cat(
            [
                GGUFBlocks(name, self._blocks(i).numpy(), self.in_features).dequantize()
                for i, (name, *_) in enumerate(self.segments)
            ]
        )

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [M, K] -> [M, N] in x's dtype: the C++ kernels on float32 activations (8-bit
        quantized inside); without them (not loaded, not CPU) the dequantizing reference."""
        kernels = loaded_kernels()
        if kernels is None or not x.is_cpu:
            return self.reference_linear(x, bias)
        x32 = x if x.dtype == torch.float32 else x.float()
        if x32.stride(-1) != 1:
            x32 = x32.contiguous()
        if len(self.segments) == 1:
            out = kernels.gguf_mm(x32, self.blocks_0, self.segments[0][1], USE_SIMD)
        else:
            out = x32.new_empty(x32.shape[0], self.out_features)
            for index, (_, type_id, start, rows) in enumerate(self.segments):
                kernels.gguf_mm_out(
                    x32, self._blocks(index), type_id, out[:, start : start + rows], USE_SIMD
                )
        if bias is not None:
            out = out + bias.float()
        return out if x.dtype == torch.float32 else out.to(x.dtype)

    def embedding(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids int64 [T] -> rows [T, K] in ``embedding_dtype``, dequantizing only those
        rows.

        Raises:
            RuntimeError (kernel) / IndexError (reference): an id outside [0, out_features).
        """
        kernels = loaded_kernels()
        if kernels is not None and len(self.segments) == 1 and input_ids.is_cpu:
            rows = kernels.gguf_dequantize_rows(
                self.blocks_0, self.segments[0][1], self.in_features, input_ids
            )
        else:  # reference: gguf.quants on the selected rows of each segment
            ids = input_ids.cpu().numpy()
            full = [
                GGUFBlocks(name, self._blocks(i).numpy(), self.in_features)
                for i, (name, *_) in enumerate(self.segments)
            ]
            rows = torch.stack([_dequantize_row(full, self.segments, int(i)) for i in ids])
        return rows.to(device=input_ids.device, dtype=self.embedding_dtype)

    def extra_repr(self) -> str:
        types = "+".join(name for name, *_ in self.segments)
        return f"gguf {types}, [{self.out_features}, {self.in_features}]"


def _dequantize_row(parts: list[GGUFBlocks], segments, row: int) -> torch.Tensor:
    for part, (_, _, start, rows) in zip(parts, segments, strict=True):
        if start <= row < start + rows:
            one = GGUFBlocks(
                part.type_name, part.data[row - start : row - start + 1], part.in_features
            )
            return one.dequantize().reshape(-1)
    raise IndexError(
        f"token id {row} outside the embedding's {segments[-1][2] + segments[-1][3]} rows"
    )
