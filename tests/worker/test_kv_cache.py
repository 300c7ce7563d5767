"""The default KV cache is sized from the model, not from the memory free at start.

SmolLM2-135M: 30 layers x 3 KV heads x 64 dims x (K + V) = 11,520 float32 values per token, so a
full 8,192-token sequence takes 512 blocks of 16 tokens = 377,487,360 bytes.
"""

from __future__ import annotations

import pytest
import torch

from kaon.models.loader.loader import read_architecture
from kaon.worker import kv_cache

CPU = torch.device("cpu")
PER_SEQUENCE = 8192 * 11_520 * 4
FLAGS = "--kv-cache-memory-bytes, --max-model-len or --max-num-seqs"


@pytest.fixture(scope="module")
def smollm2():
    config = read_architecture(None)
    assert config.kv_bytes_per_token == 11_520 and config.max_position_embeddings == 8192
    return config


def _blocks(config, **options) -> int:
    options = {"memory_bytes": None, **options}
    return kv_cache.num_blocks_for_budget(config, 16, torch.float32, CPU, **options)


def test_default_holds_four_full_sequences_whatever_is_free(smollm2, monkeypatch):
    assert kv_cache.default_max_model_len(smollm2, None) == 8192
    assert _blocks(smollm2, max_num_seqs=64) == 4 * 512
    assert _blocks(smollm2, max_num_seqs=2) == 2 * 512
    assert _blocks(smollm2, max_model_len=1024, max_num_seqs=64) == 4 * 64
    # The same size with less free memory (as long as it fits).
    monkeypatch.setattr(kv_cache, "available_memory_bytes", lambda device: 2 * 4 * PER_SEQUENCE)
    assert _blocks(smollm2, max_num_seqs=64) == 4 * 512


def test_default_is_bounded_by_total_memory(smollm2, monkeypatch):
    monkeypatch.setattr(kv_cache, "total_memory_bytes", lambda device: 2 * 1024**3)
    # 25% of 2 GiB = 512 MiB: one full sequence (360 MiB) fits, four do not.
    assert _blocks(smollm2, max_num_seqs=64) == 512 * 1024**2 // (PER_SEQUENCE // 512)
    monkeypatch.setattr(kv_cache, "total_memory_bytes", lambda device: 1024**3)
    with pytest.raises(ValueError, match="lower --max-model-len, or set --kv-cache-memory-bytes"):
        _blocks(smollm2, max_num_seqs=64)
    assert _blocks(smollm2, max_model_len=4096, max_num_seqs=64) == 256 * 1024**2 // 737_280


def test_short_memory_fails_naming_the_flags(smollm2, monkeypatch):
    monkeypatch.setattr(kv_cache, "available_memory_bytes", lambda device: 100 * 2**20)
    with pytest.raises(ValueError, match=f"only 100 MiB of memory is available: set {FLAGS}"):
        _blocks(smollm2, max_num_seqs=64)
    with pytest.raises(ValueError, match="needs 200 MiB"):
        _blocks(smollm2, memory_bytes=200 * 2**20)


def test_explicit_sizes(smollm2):
    assert _blocks(smollm2, memory_bytes=200_000_000) == 200_000_000 // 737_280
    total = kv_cache.total_memory_bytes(CPU)
    assert _blocks(smollm2, memory_fraction=0.01) == int(total * 0.01) // 737_280
