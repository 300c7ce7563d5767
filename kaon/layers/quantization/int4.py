"""Weight-only int4, group-wise, asymmetric (scale and minimum per group of ``group_size`` inputs).

    w[n, k] ~= scale[n, g] * q[n, k] + min[n, g],   q in [0, 15],   g = k // group_size

the layout of GGUF's Q4_1 (llama.cpp ``ggml-quants.c``), so Q4_1 / Q4_0 blocks of 32 map onto it
exactly (``quantization/gguf.py``). Float weights are rounded by an error-minimizing search per
group (default) or min-max (``quantization/int4_rounding.py``).

Fast paths, PyTorch's "tinygemm" int4 kernels, which use the convention
``w = (q - 8) * scale + zero`` with ``scale_and_zeros [K / group_size, N, 2]``; so zero = min + 8 *
scale (rounded to the kernel dtype):

- CPU: ``_convert_weight_to_int4pack_for_cpu(q int32 [N, K], 2)`` -> packed uint8 [N, K / 2],
  ``_weight_int4pack_mm_for_cpu(x [M, K], packed, group_size, scale_and_zeros) -> [M, N]``.
  Needs N % 16 == 0 and K % group_size == 0. It accepts float32, bfloat16 and float16 (scales in
  the same dtype), but in torch 2.13 only bfloat16 is fast (float32 is ~10x slower than a float32
  ``torch.mm`` at batch 1), so the GEMM runs in bfloat16 and float32 activations are cast.
- CUDA: ``_convert_weight_to_int4pack(uint8 [N, K / 2] = q[:, 0::2] << 4 | q[:, 1::2],
  inner_k_tiles)`` and ``_weight_int4pack_mm`` (bfloat16 only; N % 8 == 0, K % (inner_k_tiles * 16)
  == 0). Written to the documented torch API but untested here (no GPU on the build machine).

Where no fast path applies, the weight keeps unpacked ``qweight`` uint8 [N, K] and every call runs
``reference_linear`` (dequantize, then matmul). The exact ``scales``/``mins`` are kept in float32
next to the kernel's ``scale_and_zeros`` so that ``dequantize`` is exact (bit for bit GGUF's).
"""

from __future__ import annotations

import torch

from kaon.layers.quantization.base import QuantizedWeight
from kaon.layers.quantization.int4_rounding import minmax_groups, search_groups

_KERNEL_DTYPE = torch.bfloat16
GROUP_SIZES = (32, 64, 128, 256)
ROUNDING_METHODS = {"search": search_groups, "minmax": minmax_groups}


def effective_group_size(group_size: int, in_features: int) -> int:
    """``group_size``, or the largest smaller supported size dividing ``in_features`` (576-wide
    layers cannot use 128: they use 64). Raises ValueError when none of 32..256 divides it."""
    for size in sorted((s for s in GROUP_SIZES if s <= group_size), reverse=True):
        if in_features % size == 0:
            return size
    raise ValueError(f"in_features {in_features} is not a multiple of any int4 group size >= 32")


def quantize_groups(
    weight: torch.Tensor, group_size: int, method: str = "search"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight [N, K] (any float dtype) -> (q uint8 [N, K] in [0, 15], scales, mins float32
    [N, K / group_size]) with w ~= scales * q + mins per group.

    ``method``: ``"search"`` (default; clip-and-refit search minimizing each group's weighted
    squared error) or ``"minmax"`` (scale = (max - min) / 15, q = round((w - min) / scale)); see
    ``quantization/int4_rounding.py``. Raises ValueError naming ``method`` for any other value.
    """
    if method not in ROUNDING_METHODS:
        raise ValueError(f"method must be one of {', '.join(ROUNDING_METHODS)}; got {method!r}")
    n, k = weight.shape
    groups = weight.float().reshape(n * (k // group_size), group_size)
    q, scales, mins = ROUNDING_METHODS[method](groups)
    shape = (n, k // group_size)
    return q.reshape(n, k).to(torch.uint8), scales.reshape(shape), mins.reshape(shape)


def _pack(qweight: torch.Tensor, group_size: int) -> torch.Tensor | None:
    """q uint8 [N, K] -> the device's tinygemm packing, or None when no fast kernel applies."""
    n, k = qweight.shape
    if k % group_size:
        return None
    if qweight.device.type == "cpu" and n % 16 == 0:
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(qweight.to(torch.int32), 2)
    if qweight.device.type == "cuda" and n % 8 == 0:
        for inner_k_tiles in (8, 4, 2):
            if k % (inner_k_tiles * 16) == 0:
                pairs = (qweight[:, 0::2] << 4 | qweight[:, 1::2]).to(torch.uint8)
                return torch.ops.aten._convert_weight_to_int4pack(pairs, inner_k_tiles)
    return None


def _int4_mm(x: torch.Tensor, packed: torch.Tensor, group_size: int, sz: torch.Tensor):
    if x.device.type == "cpu":
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, sz)
    return torch.ops.aten._weight_int4pack_mm(x, packed, group_size, sz)


class Int4Weight(QuantizedWeight):
    """A quantized linear weight of logical shape ``[out_features, in_features]``.

    Buffers: ``scales``, ``mins`` float32 [N, K / group_size]; with a fast kernel ``packed`` (the
    device's tinygemm layout) and ``scale_and_zeros`` bfloat16 [K / group_size, N, 2]; without one
    ``qweight`` uint8 [N, K].
    """

    def __init__(
        self, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.group_size = group_size
        if scales.shape != (self.out_features, self.in_features // group_size):
            raise ValueError(f"scales shape {tuple(scales.shape)} does not match the groups")
        self.register_buffer("scales", scales.to(torch.float32).contiguous())
        self.register_buffer("mins", mins.to(torch.float32).contiguous())
        packed = _pack(qweight, group_size)
        self.register_buffer("packed", packed)
        self.register_buffer("qweight", None if packed is not None else qweight.to(torch.uint8))
        zeros = self.mins + 8 * self.scales
        sz = torch.stack([self.scales.t(), zeros.t()], dim=-1).to(_KERNEL_DTYPE).contiguous()
        self.register_buffer("scale_and_zeros", sz if packed is not None else None)

    @classmethod
    def quantize(cls, weight: torch.Tensor, group_size: int, method: str = "search") -> Int4Weight:
        """weight [N, K] (any float dtype) -> asymmetric int4 per group of inputs, rounded by
        ``method`` (``quantize_groups``)."""
        return cls(*quantize_groups(weight, group_size, method), group_size)

    def unpacked_qweight(self) -> torch.Tensor:
        """q uint8 [N, K] in [0, 15]. From ``packed`` this runs the kernel on an identity matrix
        with scale 1 and zero 8 (so w = q, exact in bfloat16): layout-agnostic, test-time only."""
        if self.qweight is not None:
            return self.qweight
        k = self.in_features
        eye = torch.eye(k, dtype=_KERNEL_DTYPE, device=self.packed.device)
        unit = torch.empty_like(self.scale_and_zeros)
        unit[..., 0], unit[..., 1] = 1.0, 8.0
        return _int4_mm(eye, self.packed, self.group_size, unit).t().to(torch.uint8)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K]: scales * q + mins, computed in float32 as GGUF does."""
        n, k = self.out_features, self.in_features
        q = self.unpacked_qweight().float().reshape(n, k // self.group_size, self.group_size)
        return (self.scales[..., None] * q + self.mins[..., None]).reshape(n, k)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [M, K] -> [M, N] in x's dtype: the tinygemm kernel in bfloat16, else the reference."""
        if self.packed is None:
            return self.reference_linear(x, bias)
        if x.dtype == _KERNEL_DTYPE:
            out = _int4_mm(x, self.packed, self.group_size, self.scale_and_zeros)
        else:
            out = _int4_mm(
                x.to(_KERNEL_DTYPE), self.packed, self.group_size, self.scale_and_zeros
            ).to(x.dtype)
        return out if bias is None else out + bias

    def extra_repr(self) -> str:
        kind = "packed" if self.packed is not None else "reference"
        return f"int4 g{self.group_size} ({kind}), [{self.out_features}, {self.in_features}]"
