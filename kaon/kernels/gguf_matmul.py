"""C++ GEMM on GGUF block-quantized weights, read in their file layout (``gguf_matmul.cpp``).

    gguf_mm(x, blocks, type_id, use_simd)           -> y float32 [M, N] = x @ dequantize(W)^T
    gguf_mm_out(x, blocks, type_id, out, use_simd)  writes y into ``out`` (may be a column slice)
    gguf_dequantize_rows(blocks, type_id, K, ids)   -> float32 [len(ids), K] (embedding lookup)

x float32 [M, K] (rows contiguous); blocks uint8 [N, K / block * block_bytes], each row the
tensor's bytes exactly as in the GGUF file; type_id the ``GGMLQuantizationType`` value.

Block layouts (llama.cpp ``ggml/src/ggml-common.h``; d, dmin, m are fp16; "nibble j" of qs[16]
is the low nibble of byte j for j < 16 and the high nibble of byte j - 16 otherwise):

    type  block bytes  layout                          weight i (q5_i = nibble_i | bit_i(qh) << 4)
    Q4_0   32    18   d, qs[16]                            d * (nibble_i - 8)
    Q4_1   32    20   d, m, qs[16]                         d * nibble_i + m
    Q5_0   32    22   d, qh[4], qs[16]                     d * (q5_i - 16)
    Q5_1   32    24   d, m, qh[4], qs[16]                  d * q5_i + m
    Q8_0   32    34   d, qs int8[32]                       d * qs_i
    Q4_K  256   144   d, dmin, scales[12], qs[128]         d * sc_s * q4 - dmin * mn_s, s = i / 32
    Q5_K  256   176   d, dmin, scales[12], qh[32], qs[128] as Q4_K with a 5th bit from qh
    Q6_K  256   210   ql[128], qh[64], scales int8[16], d  d * sc_g * (q6 - 32), g = i / 16

(Q4_K / Q5_K ``scales[12]``: 8 pairs of 6-bit (sc, mn), one per 32 weights.)

Activations are quantized per row to 8 bits (symmetric, d = max|x| / 127, round to nearest even):
32-blocks with the block sum for Q4_0 .. Q8_0 (llama.cpp's Q8_0 / Q8_1), 256-blocks with sums per
16 for the K-quants (Q8_K); products are integer (AVX2 maddubs / madd), scaled in float32 per
block and summed in a fixed order per output element: a row's result is the same at any M and any
thread split (batch invariance). Relative error against float32 x @ dequantize(W)^T is ~1e-3
(the activations' rounding). Without AVX2 (or ``use_simd=False``) a scalar loop computes the same
sums (equal up to float summation order). Errors: RuntimeError for a type without a kernel, a
K not a multiple of the block, a row byte count that does not match, or an out-of-range row id.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from kaon import envs
from kaon.kernels.cpp_build import load_cpp_module

# GGMLQuantizationType name -> (type id, weights per block, bytes per block).
KERNEL_TYPES: dict[str, tuple[int, int, int]] = {
    "Q4_0": (2, 32, 18),
    "Q4_1": (3, 32, 20),
    "Q5_0": (6, 32, 22),
    "Q5_1": (7, 32, 24),
    "Q8_0": (8, 32, 34),
    "Q4_K": (12, 256, 144),
    "Q5_K": (13, 256, 176),
    "Q6_K": (14, 256, 210),
}

_SOURCE_PATH = Path(__file__).with_name("gguf_matmul.cpp")
_FUNCTIONS = ["gguf_mm", "gguf_mm_out", "gguf_dequantize_rows", "gguf_has_avx2"]
_UNSET = object()
_kernels: object = _UNSET


def load_kernels() -> ModuleType | None:
    """The compiled module, or None (``KAON_DISABLE_CPP_OPS=1``, no compiler, a failed build).

    Decided once per process; the engine calls it at load time (``kaon.worker.cpu_kernels`` and
    the GGUF loader), never inside a request.
    """
    global _kernels
    if _kernels is _UNSET:
        _kernels = (
            None
            if envs.disable_cpp_ops()
            else load_cpp_module("kaon_gguf_matmul", _SOURCE_PATH.read_text(), _FUNCTIONS)
        )
    return _kernels  # type: ignore[return-value]


def loaded_kernels() -> ModuleType | None:
    """The module if ``load_kernels`` has loaded it, else None (never compiles)."""
    return None if _kernels is _UNSET else _kernels  # type: ignore[return-value]
