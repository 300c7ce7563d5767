"""Float32 linear weights packed for kaon's AVX2 small-batch GEMM (``kaon.kernels.cpu_gemm``).

``pack_linear_weights(model)`` runs once, after loading (and quantization): every float32 CPU
linear weight that ``prepare_for_inference`` stored as ``[in, out]`` is replaced by a
``PackedLinearWeight`` under the same attribute, which ``kaon.layers.linear.linear`` dispatches
to like a quantized weight. The packed copy replaces the plain one (no extra memory).
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import torch
from torch import nn

from kaon.kernels.cpu_gemm import PANEL_WIDTH

# Linear weights of each decoder layer: (submodule, attribute), stored [in, out] when float.
LINEAR_WEIGHTS = (("self_attn", "qkv_proj"), ("self_attn", "o_proj"),
                  ("mlp", "gate_up_proj"), ("mlp", "down_proj"))  # fmt: skip


class PackedLinearWeight(nn.Module):
    """A float32 linear weight of logical shape ``[in_features, out_features]`` (``[K, N]``).

    Parameter ``packed`` float32 [ceil(N / 16), K, 16] (the panel layout of ``cpu_gemm``; a
    parameter so that parameter counts still see the weight). ``shape`` is the logical
    ``(K, N)``; ``unpack()`` gives back the ``[K, N]`` weight bit for bit.
    """

    def __init__(self, weight_t: torch.Tensor, ops: ModuleType) -> None:
        super().__init__()
        self.in_features, self.out_features = weight_t.shape
        self.ops = ops
        self.packed = nn.Parameter(ops.pack_weight(weight_t.detach()), requires_grad=False)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.in_features, self.out_features))

    def unpack(self) -> torch.Tensor:
        """The plain ``[in, out]`` float32 weight."""
        panels = self.packed.permute(1, 0, 2).reshape(self.in_features, -1)
        return panels[:, : self.out_features].contiguous()

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [M, in] float32 -> [M, out] float32; each row independent of M (batch-invariant)."""
        if bias is not None:
            bias = _padded(bias.detach(), self.packed.shape[0] * PANEL_WIDTH)
        return self.ops.linear(x.contiguous(), self.packed, self.out_features, bias)


def _padded(bias: torch.Tensor, width: int) -> torch.Tensor:
    if bias.numel() == width:
        return bias.contiguous()
    return torch.nn.functional.pad(bias, (0, width - bias.numel()))


def pack_linear_weights(model: nn.Module, ops: ModuleType | None) -> int:
    """Replace each float32 CPU ``[in, out]`` linear weight of ``model``'s decoder layers by a
    ``PackedLinearWeight`` in place; returns how many were packed (0 when ``ops`` is None).

    Quantized weights (modules) and weights on other devices or dtypes are left alone.
    """
    if ops is None:
        return 0
    count = 0
    for module, attr, weight in _float_linear_weights(model):
        delattr(module, attr)
        setattr(module, attr, PackedLinearWeight(weight, ops))
        count += 1
    return count


def _float_linear_weights(model: nn.Module) -> Iterator[tuple[nn.Module, str, torch.Tensor]]:
    for layer in getattr(model, "layers", ()):
        for module_name, attr in LINEAR_WEIGHTS:
            module = getattr(layer, module_name, None)
            weight = getattr(module, attr, None)
            if (
                isinstance(weight, torch.Tensor)
                and weight.dtype == torch.float32
                and weight.device.type == "cpu"
                and weight.dim() == 2
            ):
                yield module, attr, weight
