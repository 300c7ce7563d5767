"""The CPU KV cache is reserved, not resident: allocating it adds almost nothing to RSS, it reads
as zeros, and a block costs memory once written (Linux; /proc/self/status)."""

from __future__ import annotations

import sys

import pytest
import torch

from kaon.models.architecture import ArchitectureConfig
from kaon.worker.kv_cache import allocate_kv_cache

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")


def _rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_kv_cache_pages_become_resident_only_when_written():
    config = ArchitectureConfig(
        architecture="LlamaForCausalLM", hidden_size=256, intermediate_size=512,
        num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4, vocab_size=64,
        head_dim=64,
    )  # fmt: skip
    before = _rss_mib()
    # 8 layers x 2 x 1024 blocks x 16 tokens x 4 heads x 64 x 4 bytes = 256 MiB
    caches = allocate_kv_cache(config, 1024, 16, torch.float32, torch.device("cpu"))
    allocated = _rss_mib()
    key, value = caches[3]
    assert len(caches) == 8 and key.shape == (1024, 16, 4, 64) and key.is_contiguous()
    assert key.dtype == torch.float32 and key.data_ptr() != value.data_ptr()
    assert allocated - before < 32, f"{allocated - before:.0f} MiB resident after allocation"
    assert int(torch.count_nonzero(key[:64])) == 0
    key[:64].fill_(1.0)  # 64 blocks x 16 KiB = 4 MiB written
    assert _rss_mib() - allocated >= 3
    assert float(value[:64].abs().sum()) == 0.0 and float(caches[2][0][:64].sum()) == 0.0
