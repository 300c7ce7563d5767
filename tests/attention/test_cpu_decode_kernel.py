"""The C++ CPU decode attention kernel against the plain-torch decode path (its reference).

Random paged caches, shuffled block tables and ragged lengths (including 1 token and exact block
multiples); the kernel must match within 1e-5. Skipped when the kernel cannot be built here. The
build happens once per install (kaon's kernel cache, ``kaon.kernels.cpp_build``).
"""

from __future__ import annotations

import pytest
import torch

from kaon.attention import cpu_decode
from kaon.attention.metadata import AttentionMetadata
from kaon.attention.torch_backend import _decode_attention, paged_attention


@pytest.fixture(scope="module")
def kernel():
    built = cpu_decode.load_kernel()
    if built is None:
        pytest.skip("CPU decode attention kernel not available (no compiler or disabled)")
    return built


def _decode_metadata(seq_lens: list[int], block_size: int, num_blocks: int, seed: int):
    """Metadata of a decode-only batch whose requests own disjoint, shuffled blocks."""
    generator = torch.Generator().manual_seed(seed)
    free = torch.randperm(num_blocks, generator=generator).tolist()
    max_blocks = max(-(-n // block_size) for n in seq_lens)
    table = []
    for n in seq_lens:
        blocks = [free.pop() for _ in range(-(-n // block_size))]
        table.append(blocks + [0] * (max_blocks - len(blocks)))
    lens = torch.tensor(seq_lens, dtype=torch.int64)
    mask = torch.arange(max_blocks * block_size).unsqueeze(0) < lens.unsqueeze(1)
    return AttentionMetadata(
        slot_mapping=torch.zeros(len(seq_lens), dtype=torch.int64),
        num_decode_tokens=len(seq_lens),
        decode_block_tables=torch.tensor(table, dtype=torch.int64),
        decode_seq_lens=lens,
        decode_mask=mask.view(len(seq_lens), 1, 1, -1),
        prefills=[],
    )


@pytest.mark.parametrize(
    ("seq_lens", "num_heads", "num_kv_heads", "head_dim"),
    [
        ([1], 9, 3, 64),
        ([100], 9, 3, 64),
        ([16, 32, 1, 17, 150, 3], 9, 3, 64),
        ([37, 5, 64], 4, 4, 32),
        ([2000, 9], 8, 2, 128),
    ],
)
def test_kernel_matches_torch(kernel, seq_lens, num_heads, num_kv_heads, head_dim):
    block_size, num_blocks = 16, 256
    torch.manual_seed(len(seq_lens) * 1000 + num_heads)
    metadata = _decode_metadata(seq_lens, block_size, num_blocks, seed=len(seq_lens))
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache, value_cache = torch.randn(shape), torch.randn(shape)
    # Strided like the model's query: a view into a wider [T, H + KVH, D] tensor.
    query = torch.randn(len(seq_lens), num_heads + num_kv_heads, head_dim)[:, :num_heads]
    scale = head_dim**-0.5
    expected = _decode_attention(query, key_cache, value_cache, metadata, scale)
    out = torch.full((len(seq_lens), num_heads, head_dim), float("nan"))
    kernel(out, query, key_cache, value_cache, metadata.decode_block_tables,
           metadata.decode_seq_lens, scale)  # fmt: skip
    assert (out - expected).abs().max().item() <= 1e-5


def test_batched_rows_equal_single_request_rows(kernel):
    """Bit-exact batch invariance: with 8 requests a task takes all KV heads of a request; alone,
    a request is split by KV head across threads. Each head's output must not change."""
    seq_lens, num_heads, num_kv_heads, head_dim, block_size = (
        [5, 70, 16, 33, 1, 90, 47, 64],
        9,
        3,
        64,
        16,
    )
    torch.manual_seed(7)
    metadata = _decode_metadata(seq_lens, block_size, 64, seed=7)
    shape = (64, block_size, num_kv_heads, head_dim)
    key_cache, value_cache = torch.randn(shape), torch.randn(shape)
    query = torch.randn(len(seq_lens), num_heads, head_dim)
    tables, lens = metadata.decode_block_tables, metadata.decode_seq_lens
    batched = torch.empty(len(seq_lens), num_heads, head_dim)
    kernel(batched, query, key_cache, value_cache, tables, lens, 0.125)
    for row in range(len(seq_lens)):
        alone = torch.empty(1, num_heads, head_dim)
        kernel(alone, query[row : row + 1], key_cache, value_cache, tables[row : row + 1],
               lens[row : row + 1], 0.125)  # fmt: skip
        assert torch.equal(alone[0], batched[row]), f"request {row}"


def test_paged_attention_uses_kernel_rows_only(kernel):
    """Through paged_attention: decode rows come from the kernel and equal the torch path."""
    num_heads, num_kv_heads, head_dim, block_size = 9, 3, 64, 16
    metadata = _decode_metadata([40, 7], block_size, 32, seed=3)
    shape = (32, block_size, num_kv_heads, head_dim)
    key_cache, value_cache = torch.randn(shape), torch.randn(shape)
    query = torch.randn(2, num_heads, head_dim)
    key = value = torch.randn(2, num_kv_heads, head_dim)  # only read by prefills
    out = paged_attention(query, key, value, key_cache, value_cache, metadata, 0.125)
    expected = _decode_attention(query, key_cache, value_cache, metadata, 0.125)
    assert out.shape == (2, num_heads * head_dim)
    assert (out.view(2, num_heads, head_dim) - expected).abs().max().item() <= 1e-5


def test_disabled_by_env(monkeypatch):
    monkeypatch.setenv("KAON_DISABLE_CPP_ATTENTION", "1")
    monkeypatch.setattr(cpu_decode, "_kernel", cpu_decode._UNSET)
    assert cpu_decode.load_kernel() is None
    assert not cpu_decode.supports(torch.zeros(1, 9, 64, dtype=torch.float64), torch.zeros(1))
