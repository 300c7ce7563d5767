"""The CUDA-only branches' Python logic, run on CPU.

- Decode CUDA graphs (kaon/worker/cuda_graphs.py): capture sizes, padding to the next captured
  size, the padding KV block, and a whole engine that replays "graphs" for its decode steps. On
  CPU a fake device check turns graphs on and ``EagerReplay`` stands in for torch.cuda.CUDAGraph,
  so the same static buffers, padding and replay bookkeeping run; greedy outputs must equal the
  eager engine's token for token (both float32 on the same CPU kernels).
- ``kv_cache_memory_fraction`` on CUDA: a fraction of the free GPU memory after the weights load,
  from a given free-memory figure.
- The Triton paged decode kernel vs the PyTorch reference, under Triton's CPU interpreter (skipped
  where Triton is not installed; it is on the GPU machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from kaon import LLM, SamplingParams
from kaon.models.architecture import ArchitectureConfig
from kaon.worker import kv_cache
from kaon.worker import worker as worker_module
from kaon.worker.cuda_graphs import capture_sizes, padded_size

VOCAB_SIZE = 128
GiB = 1024**3


def test_capture_sizes_follow_vllm():
    assert capture_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert capture_sizes(5) == [1, 2, 4, 5]
    assert capture_sizes(1) == [1]
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert capture_sizes(1000)[-1] == 256 and capture_sizes(1000, max_size=512)[-1] == 512


def test_padded_size_is_the_next_captured_size():
    sizes = [1, 2, 4, 8, 16]
    assert [padded_size(n, sizes) for n in (1, 2, 3, 4, 5, 8, 9, 16)] == [1, 2, 4, 4, 8, 8, 16, 16]
    assert padded_size(17, sizes) is None  # larger than every graph: eager


def test_fraction_of_free_gpu_memory():
    # CPU: of total memory; CUDA: of free memory less the 1 GiB activation reserve.
    assert kv_cache.fraction_budget_bytes(0.5, 64 * GiB, None) == 32 * GiB
    assert kv_cache.fraction_budget_bytes(0.5, 141 * GiB, 41 * GiB) == 20 * GiB
    with pytest.raises(ValueError, match="kv_cache_memory_fraction"):
        kv_cache.fraction_budget_bytes(0.9, 141 * GiB, GiB // 2)


def test_kv_cache_blocks_from_a_given_free_memory_figure(monkeypatch):
    config = ArchitectureConfig(
        architecture="LlamaForCausalLM", vocab_size=128256, hidden_size=2048,
        intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=5e5,
        max_position_embeddings=4096,
    )  # fmt: skip
    # bfloat16: 16 layers x 8 heads x 64 dims x (K + V) x 2 bytes = 32 KiB per token.
    per_block = kv_cache.bytes_per_block(config, 16, torch.bfloat16)
    assert per_block == 16 * 32 * 1024
    cuda = torch.device("cuda")
    monkeypatch.setattr(kv_cache, "total_memory_bytes", lambda device: 141 * GiB)
    monkeypatch.setattr(kv_cache, "available_memory_bytes", lambda device: 11 * GiB)
    blocks = kv_cache.num_blocks_for_budget(config, 16, torch.bfloat16, cuda, None, 0.5)
    assert blocks == 5 * GiB // per_block == 10240


def test_enforce_eager_is_an_engine_option_and_a_flag():
    import argparse

    from kaon.config import EngineConfig, add_cli_args, options_from_cli

    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    options = options_from_cli(parser.parse_args(["--enforce-eager"]))
    assert options["enforce_eager"] is True and options["max_cuda_graph_batch_size"] == 256
    config = EngineConfig.from_options(enforce_eager=True)
    assert config.model_config.enforce_eager is True
    with pytest.raises(ValueError, match="max_cuda_graph_batch_size"):
        EngineConfig.from_options(max_cuda_graph_batch_size=0)


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=0, tie_word_embeddings=False,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    tokenizer = Tokenizer(WordLevel({f"t{i}": i for i in range(VOCAB_SIZE)}, unk_token="t2"))
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "t1", "eos_token": "t0"}))
    return str(path)


# 11 prompts of 1..21 tokens: decode batches of 11, then fewer as short requests finish (padded
# to 16, 8, 4, 2 and 1).
PROMPTS = [[1, *range(5, 5 + 2 * i)] for i in range(11)]


def _greedy(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    # Longer prompts generate more: decode batches shrink as the short requests finish.
    params = [
        SamplingParams(temperature=0, max_tokens=5 + len(prompt), ignore_eos=True)
        for prompt in prompts
    ]
    return [out.outputs[0].token_ids for out in llm.generate(prompts, params, use_tqdm=False)]


def test_engine_with_fake_cuda_graphs_equals_eager(tiny_llama_dir, monkeypatch):
    options = {"device": "cpu", "dtype": "float32", "max_num_seqs": 16, "block_size": 4}
    with LLM(tiny_llama_dir, enforce_eager=True, **options) as eager:
        assert eager.engine.executor.driver.model_runner.cuda_graphs is None
        expected = _greedy(eager, PROMPTS)
        alone = [_greedy(eager, [prompt])[0] for prompt in PROMPTS[:3]]
    assert alone == expected[:3]
    # The fake device check: graphs "supported" on CPU (EagerReplay stands in for CUDAGraph).
    monkeypatch.setattr(worker_module, "graphs_supported", lambda model, device, tp_size: None)
    with LLM(tiny_llama_dir, **options) as graphed:
        worker = graphed.engine.executor.driver
        graphs = worker.model_runner.cuda_graphs
        assert graphs is not None and graphs.sizes == [1, 2, 4, 8, 16]
        num_blocks = graphed.engine.scheduler.kv_cache_manager.block_pool.num_blocks
        key_cache = worker.model_runner.model.kv_caches()[0].key_cache
        assert graphs.padding_block == num_blocks == key_cache.shape[0] - 1
        outputs = _greedy(graphed, PROMPTS)
        assert outputs == expected
        # Every step after the prefill of each request was a replay (many steps are decodes).
        assert graphs.num_replays >= max(len(ids) for ids in expected) - 1
        # Padded rows (past the 11 real ones) decode into the padding block with a context of 1.
        assert graphs.block_tables[len(PROMPTS) :, 0].tolist() == [num_blocks] * (16 - len(PROMPTS))
        assert graphs.seq_lens[len(PROMPTS) :].tolist() == [1] * (16 - len(PROMPTS))
        # A second run over the same engine (buffers already dirty) gives the same tokens.
        assert _greedy(graphed, PROMPTS[:5]) == expected[:5]


_TRITON_CHECK = textwrap.dedent(
    """
    import torch
    from kaon.attention import torch_backend, triton_decode
    from kaon.attention.metadata import AttentionMetadata

    torch.manual_seed(0)
    num_blocks, block_size, kv_heads, head_dim, heads = 12, 16, 2, 64, 8
    key_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim)
    value_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim)
    query = torch.randn(3, heads, head_dim)
    tables = torch.tensor([[3, 5, 7, 0], [1, 2, 0, 0], [9, 10, 11, 4]])
    seq_lens = torch.tensor([40, 17, 64])
    assert triton_decode.self_test(torch.device("cpu")) == "ok"
    assert triton_decode.supports(query, key_cache)
    out = torch.zeros(3, heads, head_dim)
    triton_decode.paged_decode_attention(
        out, query, key_cache, value_cache, tables, seq_lens, head_dim**-0.5
    )
    mask = (torch.arange(64)[None, :] < seq_lens[:, None]).view(3, 1, 1, 64)
    metadata = AttentionMetadata(torch.zeros(3, dtype=torch.int64), 3, tables, seq_lens, mask, [])
    reference = torch_backend._decode_attention(
        query, key_cache, value_cache, metadata, head_dim**-0.5
    )
    print((out - reference).abs().max().item())
    """
)


def test_triton_decode_kernel_matches_torch_reference():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) <= 1e-5
