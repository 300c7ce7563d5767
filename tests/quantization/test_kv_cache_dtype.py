"""A bfloat16 KV cache under float32 activations: writes are cast, decode attention (which then
skips the float32-only C++ kernel) reads back through the torch path and agrees with the float32
cache to bfloat16 precision (relative error < 1e-2; measured ~3e-3)."""

from __future__ import annotations

import torch

from kaon.attention.torch_backend import paged_attention, write_kv_cache
from tests.attention.test_cpu_decode_kernel import _decode_metadata


def test_bfloat16_cache_matches_float32_cache() -> None:
    num_heads, num_kv_heads, head_dim, block_size, num_blocks = 9, 3, 64, 16, 32
    torch.manual_seed(0)
    metadata = _decode_metadata([40, 7, 16], block_size, num_blocks, seed=5)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    float_k, float_v = torch.randn(shape), torch.randn(shape)
    bf16_k, bf16_v = float_k.to(torch.bfloat16), float_v.to(torch.bfloat16)
    # This step's keys/values go to slot 0 of each request's first block, through the cast path.
    key, value = torch.randn(3, num_kv_heads, head_dim), torch.randn(3, num_kv_heads, head_dim)
    metadata.slot_mapping = metadata.decode_block_tables[:, 0] * block_size
    write_kv_cache(key, value, float_k, float_v, metadata.slot_mapping)
    write_kv_cache(key, value, bf16_k, bf16_v, metadata.slot_mapping)
    assert bf16_k.dtype == torch.bfloat16
    slots = bf16_k.view(-1, num_kv_heads, head_dim)[metadata.slot_mapping]
    torch.testing.assert_close(slots, key.to(torch.bfloat16), rtol=0, atol=0)
    query = torch.randn(3, num_heads, head_dim)
    scale = head_dim**-0.5
    expected = paged_attention(query, key, value, float_k, float_v, metadata, scale)
    got = paged_attention(query, key, value, bf16_k, bf16_v, metadata, scale)
    assert got.dtype == torch.float32
    assert ((got - expected).norm() / expected.norm()).item() < 1e-2
