"""Weight-only int8, symmetric, one scale per output channel.

    w[n, k] ~= scale[n] * q[n, k],   q int8 in [-127, 127],   scale[n] = max_k |w[n, k]| / 127

(the per-channel absmax scheme of LLM.int8's weight side, Dettmers et al. 2022, without the
outlier decomposition). Activations stay in floating point.

Fast path: ``torch.ops.aten._weight_int8pack_mm(x [M, K], q [N, K] int8, scales [N]) -> [M, N]``
(CPU and CUDA). In torch 2.13 the scales must have the activation dtype, and on CPU the kernel is
only vectorised for bfloat16 activations (float32 runs ~4x slower than a float32 ``torch.mm``), so
float32 activations are cast to bfloat16 for the GEMM and the result is cast back: the fast path
then agrees with the float32 reference to bfloat16 precision (relative error ~1e-2), which is the
tolerance the tests state. ``reference_linear`` is the plain dequantize-then-matmul twin.
"""

from __future__ import annotations

import torch

from kaon.layers.quantization.base import QuantizedWeight

_KERNEL_DTYPE = torch.bfloat16  # the dtype the int8 kernel is fast in (CPU and CUDA)


class Int8Weight(QuantizedWeight):
    """A quantized linear weight of logical shape ``[out_features, in_features]``.

    Buffers: ``qweight`` int8 [N, K]; ``scales`` float32 [N] (the exact per-channel scales);
    ``kernel_scales`` [N] in the kernel's compute dtype (bfloat16).
    """

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.to(torch.float32).contiguous())
        self.register_buffer("kernel_scales", scales.to(_KERNEL_DTYPE).contiguous())

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> Int8Weight:
        """weight [N, K] (any float dtype) -> per-channel symmetric int8 (round to nearest)."""
        weight = weight.float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # [N]
        qweight = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(qweight, scales)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] the quantized values stand for: scales[n] * q[n, k]."""
        return self.qweight.float() * self.scales[:, None]

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [M, K] -> [M, N] in x's dtype through ``_weight_int8pack_mm`` (bfloat16 compute)."""
        if x.dtype == _KERNEL_DTYPE:
            out = torch.ops.aten._weight_int8pack_mm(x, self.qweight, self.kernel_scales)
        else:
            out = torch.ops.aten._weight_int8pack_mm(
                x.to(_KERNEL_DTYPE), self.qweight, self.kernel_scales
            ).to(x.dtype)
        return out if bias is None else out + bias

    def extra_repr(self) -> str:
        return f"int8 per-channel, [{self.out_features}, {self.in_features}]"
