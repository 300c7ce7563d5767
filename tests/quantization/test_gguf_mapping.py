"""GGUF Q4_0 / Q4_1 blocks map exactly onto kaon's group-32 int4."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from kaon.layers.quantization import Int4Weight
from kaon.layers.quantization.gguf import decode_int4_blocks


def _int4(blocks) -> Int4Weight:
    q, scales, mins = blocks.tensors()
    return Int4Weight(q, scales, mins, 32)


def test_default_model_q4_1_mapping_is_bit_exact(default_gguf_path: str) -> None:
    """Dequantized kaon int4 weights equal gguf.quants.dequantize bit for bit (through the packed
    tinygemm layout), for a q, a k (row-permuted by the loader) and an MLP tensor."""
    from kaon.models.loader.gguf import open_gguf

    reader = open_gguf(default_gguf_path)
    names = {"blk.0.attn_q.weight", "blk.3.attn_k.weight", "blk.29.ffn_down.weight"}
    checked = 0
    for tensor in reader.tensors:
        if tensor.name not in names:
            continue
        assert tensor.tensor_type == GGMLQuantizationType.Q4_1
        expected = dequantize(tensor.data, tensor.tensor_type)
        weight = _int4(decode_int4_blocks(tensor.data, "Q4_1"))
        assert weight.packed is not None  # the fast kernel layout, not the unpacked fallback
        got = weight.dequantize().numpy()
        assert got.shape == expected.shape
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
        checked += 1
    assert checked == len(names)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1"])
def test_synthetic_blocks_are_exact(type_name: str) -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((32, 128)).astype(np.float32)
    qtype = GGMLQuantizationType[type_name]
    raw = quantize(weight, qtype)
    expected = dequantize(raw, qtype)
    got = _int4(decode_int4_blocks(raw, type_name)).dequantize().numpy()
    # Q4_1 is bit exact. Q4_0's d * (q - 8) is computed as d * q + (-8 d): equal values, but q = 8
    # with d < 0 gives +0.0 where gguf gives -0.0, so compare +0.0-normalised bits.
    assert np.array_equal((got + 0.0).view(np.uint32), (expected + 0.0).view(np.uint32))
    if type_name == "Q4_1":
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_loader_native_path_matches_dequantized_float(default_gguf_path: str) -> None:
    """The loader's int4 g32 path (Q4_1 blocks, un-permuted, fused) holds exactly the float
    weights the float32 loader builds from the same file."""
    from kaon.models.loader import load_model

    cpu = torch.device("cpu")
    native = load_model(
        default_gguf_path, torch.float32, cpu, quantization="int4", group_size=32
    ).model
    floats = load_model(default_gguf_path, torch.float32, cpu).model
    for index in (0, 17):
        for module, attr in (("self_attn", "qkv_proj"), ("mlp", "gate_up_proj")):
            quantized = getattr(getattr(native.layers[index], module), attr)
            reference = getattr(getattr(floats.layers[index], module), attr).t()  # [out, in]
            assert torch.equal(quantized.dequantize(), reference)
    assert native.embed_tokens.dtype == torch.float32
    assert torch.equal(native.embed_tokens, floats.embed_tokens)


def test_decode_rejects_other_types() -> None:
    with pytest.raises(ValueError, match="Q8_0"):
        decode_int4_blocks(np.zeros((1, 34), dtype=np.uint8), "Q8_0")
