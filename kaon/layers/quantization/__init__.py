"""Weight-only quantization of a loaded model's linear layers (and LM head).

Applied once, after the (possibly tensor-parallel-sharded) float weights are in place and stored
``[in, out]`` by ``prepare_for_inference``: each linear weight ``nn.Parameter`` is replaced by an
``Int8Weight`` / ``Int4Weight`` module under the same attribute name, and ``layers.linear.linear``
dispatches to its ``linear`` method. Embeddings and norms keep the activation dtype; a tied LM
head (SmolLM2) gets its own quantized copy of ``embed_tokens``, the embedding stays float.

Schemes: ``none``, ``int8`` (``quantization/int8.py``), ``int4`` (``quantization/int4.py``, group
size 32 / 64 / 128 / 256). GGUF Q4_0 / Q4_1 tensors arrive as ``Int4Blocks`` (``gguf.py``) when
``int4`` with group size 32 is asked for, and are installed without a float round trip.
``auto`` (the default): a GGUF's tensors of a type with a C++ kernel arrive as ``GGUFBlocks`` and
are installed as ``GGUFBlockWeight`` (``gguf_blocks.py``), the embedding table and a tied LM head
included; everything else stays float (the loader resolves ``auto`` to ``none`` for other models).
"""

from __future__ import annotations

import torch
from torch import nn

from kaon.layers.quantization.gguf import Int4Blocks
from kaon.layers.quantization.gguf_blocks import GGUFBlocks, GGUFBlockWeight
from kaon.layers.quantization.int4 import GROUP_SIZES, Int4Weight, effective_group_size
from kaon.layers.quantization.int8 import Int8Weight

SCHEMES = ("auto", "none", "int8", "int4")
# Linear weights of each decoder layer: (submodule, attribute), stored [in, out] when float.
LINEAR_WEIGHTS = (("self_attn", "qkv_proj"), ("self_attn", "o_proj"),
                  ("mlp", "gate_up_proj"), ("mlp", "down_proj"))  # fmt: skip

__all__ = [
    "GROUP_SIZES",
    "SCHEMES",
    "GGUFBlockWeight",
    "GGUFBlocks",
    "Int4Blocks",
    "Int4Weight",
    "Int8Weight",
    "quantize_model",
    "take_int4_blocks",
    "weight_bytes",
]


def validate(scheme: str, group_size: int) -> None:
    """Raises ValueError naming ``quantization`` or ``quantization_group_size``."""
    if scheme not in SCHEMES:
        raise ValueError(f"quantization must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    if group_size not in GROUP_SIZES:
        raise ValueError(
            f"quantization_group_size must be one of {', '.join(map(str, GROUP_SIZES))}; "
            f"got {group_size!r}"
        )


def quantize_weight(
    weight: torch.Tensor | Int4Blocks, scheme: str, group_size: int, device: torch.device
) -> Int8Weight | Int4Weight:
    """One ``[out, in]`` float weight (or GGUF int4 blocks) -> its quantized module on
    ``device`` (built there: the int4 packing is device-specific)."""
    if isinstance(weight, Int4Blocks):
        q, scales, mins = (t.to(device) for t in weight.tensors())
        return Int4Weight(q, scales, mins, 32)
    weight = weight.to(device)
    if scheme == "int8":
        return Int8Weight.quantize(weight)
    return Int4Weight.quantize(weight, effective_group_size(group_size, weight.shape[1]))


def quantize_model(
    model: nn.Module,
    scheme: str,
    group_size: int = 32,
    prequantized: dict[str, Int4Blocks | list[GGUFBlocks]] | None = None,
) -> None:
    """Replace every linear weight of ``model`` (a LlamaForCausalLM after
    ``prepare_for_inference``) and its LM head by quantized modules, in place.

    ``prequantized`` maps parameter names (``layers.3.mlp.gate_up_proj``) to GGUF blocks whose
    float parameter the loader left unset (None).

    Raises:
        ValueError: naming the field for a bad scheme or group size.
    """
    validate(scheme, group_size)
    if scheme == "auto":
        install_gguf_blocks(model, prequantized or {})
        return
    if scheme == "none":
        return
    prequantized = prequantized or {}
    device = model.embed_tokens.device
    for index, layer in enumerate(model.layers):
        for module_name, attr in LINEAR_WEIGHTS:
            module = getattr(layer, module_name)
            name = f"layers.{index}.{module_name}.{attr}"
            weight = prequantized.get(name)
            if weight is None:
                weight = getattr(module, attr).t()  # stored [in, out]
            quantized = quantize_weight(weight, scheme, group_size, device)
            delattr(module, attr)
            setattr(module, attr, quantized)
    head = model.embed_tokens if model.lm_head is None else model.lm_head
    quantized_head = quantize_weight(prequantized.get("lm_head", head), scheme, group_size, device)
    delattr(model, "lm_head")
    model.lm_head = quantized_head


def install_gguf_blocks(model: nn.Module, blocks: dict[str, object]) -> None:
    """Set each parameter named in ``blocks`` (left None by ``take_int4_blocks``) to a
    ``GGUFBlockWeight`` of its parts (``embed_tokens`` and ``lm_head`` included); embedding
    rows come out in the dtype of the model's final norm weight (the activation dtype).
    ``blocks`` is emptied as it goes, so that each weight's parts are freed once installed."""
    dtype = model.norm.weight.dtype
    for name in list(blocks):
        parts = blocks.pop(name)
        module_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(module_name) if module_name else model
        if hasattr(owner, attr):
            delattr(owner, attr)
        weight = GGUFBlockWeight(parts)  # type: ignore[arg-type]
        weight.embedding_dtype = dtype
        setattr(owner, attr, weight)


def take_int4_blocks(model: nn.Module, params: dict[str, object]) -> dict[str, object]:
    """Move the parameters holding GGUF ``Int4Blocks`` or ``GGUFBlocks`` (alone or among fused
    parts) out of ``params`` and set those parameters of ``model`` (still on meta) to None, so
    that no float storage is ever allocated for them. Returns name -> the fused Int4Blocks, or
    the list of GGUFBlocks parts (a fused weight mixing GGUFBlocks with float parts, from a type
    without a kernel, is dequantized whole and stays a float parameter)."""
    native: dict[str, object] = {}
    for name, value in list(params.items()):
        parts = value if isinstance(value, list) else [value]
        if all(isinstance(part, GGUFBlocks) for part in parts):
            native[name] = parts
        elif any(isinstance(part, GGUFBlocks) for part in parts):
            dtype = next(p.dtype for p in parts if isinstance(p, torch.Tensor))
            params[name] = [
                p.dequantize().to(dtype) if isinstance(p, GGUFBlocks) else p for p in parts
            ]
            continue
        elif any(isinstance(part, Int4Blocks) for part in parts):
            native[name] = Int4Blocks.concat(parts)
        else:
            continue
        del params[name]
        module_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(module_name) if module_name else model, attr, None)
    return native


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer that is a weight (embedding, norms, linear layers and
    their scales), excluding the KV cache and the RoPE tables."""
    total = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name.startswith("rotary."):
            continue
        total += tensor.numel() * tensor.element_size()
    return total
