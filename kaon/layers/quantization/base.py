"""What every quantized linear weight shares: the dequantize-then-matmul reference path."""

from __future__ import annotations

import torch
from torch import nn


class QuantizedWeight(nn.Module):
    """A quantized linear weight of logical shape ``[out_features, in_features]``.

    Subclasses define ``dequantize()`` (the float32 weight [N, K] the stored values stand for)
    and ``linear(x, bias)`` (their fast kernel); ``reference_linear`` is the plain twin the
    kernels are tested against.
    """

    out_features: int
    in_features: int

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError

    def reference_linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [M, K] @ dequantize().T (+ bias) -> [M, N] in x's dtype (float32 math)."""
        out = x.float() @ self.dequantize().t()
        if bias is not None:
            out = out + bias.float()
        return out.to(x.dtype)
