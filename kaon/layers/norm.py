"""RMSNorm (Zhang & Sennrich 2019), computed in float32 as Hugging Face Llama does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kaon.kernels import cpu_fused


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x**2) + eps) * weight`` over the last dimension.

    ``forward(x, residual)`` first adds ``residual`` to ``x`` and returns ``(y, x + residual)``,
    the pre-norm residual stream of a decoder layer, in one call. On float32 CPU tensors
    ([num_tokens, hidden_size], contiguous) one fused C++ call does both and updates ``residual``
    in place (``kaon.kernels.cpu_fused``).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        ops = cpu_fused.ops_for(x)
        if ops is not None and x.dim() == 2 and x.is_contiguous():
            if residual is None:
                return ops.rms_norm(x, self.weight, self.eps)
            return ops.add_rms_norm_(x, residual, self.weight, self.eps), residual
        if residual is not None:
            x = x + residual
            residual = x
        if x.dtype == torch.float32:  # one fused kernel; same result as below in float32
            y = F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        else:
            x32 = x.float()
            variance = x32.pow(2).mean(-1, keepdim=True)
            y = (x32 * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight
        return y if residual is None else (y, residual)
