"""RMSNorm (Zhang & Sennrich 2019), computed in float32 as Hugging Face Llama does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x**2) + eps) * weight`` over the last dimension.

    ``forward(x, residual)`` first adds ``residual`` to ``x`` and returns ``(y, x + residual)``,
    the pre-norm residual stream of a decoder layer, in one call.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
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
