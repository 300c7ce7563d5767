"""Linear layers whose weights are stored transposed, ``[in_features, out_features]``.

Checkpoints hold ``[out, in]`` (``y = x W^T``). After loading, ``transpose_for_inference`` stores
each weight as a contiguous ``[in, out]`` tensor so the forward is one ``torch.mm`` (or
``torch.addmm``) dispatch instead of ``F.linear``'s linear -> t -> matmul -> mm chain: at batch 1
the decode step is ~150 linear calls, and the saved dispatches matter as much as the GEMV.
"""

from __future__ import annotations

import torch
from torch import nn


def linear(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None):
    """x [num_tokens, in] @ weight_t [in, out] (+ bias [out]) -> [num_tokens, out].

    ``weight_t`` may instead be a quantized weight module (``kaon.layers.quantization``), which
    computes the product itself; the float path pays one isinstance check.
    """
    if not isinstance(weight_t, torch.Tensor):
        return weight_t.linear(x, bias)
    if bias is None:
        return torch.mm(x, weight_t)
    return torch.addmm(bias, x, weight_t)


def transpose_for_inference(module: nn.Module, names: tuple[str, ...]) -> None:
    """Replace each named ``[out, in]`` parameter of ``module`` by its contiguous transpose
    (parameters left unset, None, stay so: the GGUF int4 loader installs those later)."""
    for name in names:
        weight = getattr(module, name)
        if weight is None:
            continue
        setattr(module, name, nn.Parameter(weight.t().contiguous(), requires_grad=False))
