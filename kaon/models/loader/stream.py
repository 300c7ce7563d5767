"""Fill an allocated model from a stream of (name, first row, rows) pieces, one at a time.

Peak memory while loading is then the model itself plus one piece (``iter_gguf_row_chunks``
bounds a piece to ~16 MB of float32), instead of every dequantized tensor held at once next to
the model. Fused parameters take their parts at row offsets:

    qkv_proj     = [q_proj rows | k_proj rows | v_proj rows]      (qkv_bias alike)
    gate_up_proj = [gate_proj rows | up_proj rows]
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from kaon.models.architecture import ArchitectureConfig


def _destination(name: str, config: ArchitectureConfig) -> tuple[str, int] | None:
    """Hugging Face tensor name -> (model parameter name, row offset); None = not a parameter."""
    q_size = config.num_attention_heads * config.head_dim
    kv_size = config.num_key_value_heads * config.head_dim
    prefix, _, leaf = name.rpartition(".")
    fused = {
        "self_attn.q_proj": ("self_attn.qkv_proj", 0),
        "self_attn.k_proj": ("self_attn.qkv_proj", q_size),
        "self_attn.v_proj": ("self_attn.qkv_proj", q_size + kv_size),
        "mlp.gate_proj": ("mlp.gate_up_proj", 0),
        "mlp.up_proj": ("mlp.gate_up_proj", config.intermediate_size),
    }
    if name in ("embed_tokens.weight", "lm_head.weight"):
        return name.removesuffix(".weight"), 0
    layer, _, module = prefix.partition(".")  # "layers", "N.self_attn.q_proj"
    index, _, module = module.partition(".")
    if layer != "layers":
        return (name, 0) if name == "norm.weight" else None
    if module in fused:
        target, offset = fused[module]
        if leaf == "bias":
            target = target.replace("qkv_proj", "qkv_bias")
        return f"layers.{index}.{target}", offset
    if module in ("self_attn.o_proj", "mlp.down_proj"):
        return f"layers.{index}.{module}", 0
    return name, 0  # norms


def stream_into(
    model: nn.Module, config: ArchitectureConfig, pieces: Iterable[tuple[str, int, torch.Tensor]]
) -> torch.Tensor | None:
    """Copy every piece into ``model``'s parameters (allocated, [out, in] layout) and return the
    ``rope_freqs`` tensor if the stream had one.

    Raises:
        ValueError: naming a tensor whose rows do not fit its parameter, or the parameters that
            no piece filled.
    """
    own = dict(model.named_parameters())
    filled = {name: 0 for name in own}
    freq_divisors = None
    with torch.no_grad():
        for name, first_row, rows in pieces:
            if name == "rope_freqs":
                freq_divisors = rows
                continue
            target = _destination(name, config)
            if target is None or target[0] not in own:
                continue  # lm_head.weight of a tied checkpoint: embed_tokens serves
            param_name, offset = target
            param = own[param_name]
            start = offset + first_row
            if start + rows.shape[0] > param.shape[0] or rows.shape[1:] != param.shape[1:]:
                raise ValueError(
                    f"tensor {name} rows {first_row}..{first_row + rows.shape[0]} of shape "
                    f"{tuple(rows.shape[1:])} do not fit {param_name} {tuple(param.shape)}"
                )
            param[start : start + rows.shape[0]].copy_(rows)
            filled[param_name] += rows.shape[0]
    missing = sorted(n for n, count in filled.items() if count != own[n].shape[0])
    if missing:
        raise ValueError(f"model weights are missing tensors: {', '.join(missing[:5])}")
    return freq_divisors
