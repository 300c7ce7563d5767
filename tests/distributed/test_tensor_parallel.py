"""Tensor parallelism on this CPU (gloo): TP=2 equals TP=1 on the real default model, each rank
holds only its shard, and worker ranks never outlive the engine nor hang it when they fail.

Tolerance: first-forward logits of TP=2 and TP=1 differ only in float32 summation order (partial
sums of o_proj / down_proj added by the all-reduce); max |difference| <= 1e-4 (we measure ~9e-5
at most over these prompts, on logits of magnitude ~20).
"""

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from kaon import LLM, SamplingParams
from tests.conftest import ENGINE_TEST_OPTIONS, assert_all_blocks_free

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "In 2024, the population was 8,045,311 and rising 3.75% per year.",
]


@pytest.fixture(scope="module")
def tp2():
    """The default model split over 2 ranks (rank 1 in a worker process)."""
    llm = LLM(**ENGINE_TEST_OPTIONS, tensor_parallel_size=2)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def tp1(reference_llm):
    """The same model on one rank, fresh for this module."""
    return reference_llm


def test_greedy_outputs_equal_tp1(tp1, tp2):
    params = SamplingParams(temperature=0, max_tokens=24, min_tokens=24)
    expected = [o.outputs[0].token_ids for o in tp1.generate(PROMPTS, params, use_tqdm=False)]
    outputs = tp2.generate(PROMPTS, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert all(len(ids) == 24 for ids in expected)
    assert_all_blocks_free(tp2)


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_first_forward_logits_within_1e_4_of_tp1(tp1, tp2, prompt):
    token_ids = tp1.tokenizer.encode(prompt)
    expected = tp1.engine.prompt_logits(token_ids)
    logits = tp2.engine.prompt_logits(token_ids)
    assert logits.dtype == torch.float32 and logits.shape == (len(token_ids), 49152)
    assert (logits - expected).abs().max().item() <= 1e-4


def test_logprobs_and_prompt_logprobs_match_tp1(tp1, tp2):
    params = SamplingParams(temperature=0, max_tokens=4, logprobs=2, prompt_logprobs=1)
    (expected,) = tp1.generate(PROMPTS[:1], params, use_tqdm=False)
    (output,) = tp2.generate(PROMPTS[:1], params, use_tqdm=False)
    assert output.outputs[0].token_ids == expected.outputs[0].token_ids
    for ours, theirs in [(output.prompt_logprobs[1:], expected.prompt_logprobs[1:]),
                         (output.outputs[0].logprobs, expected.outputs[0].logprobs)]:  # fmt: skip
        assert len(ours) == len(theirs) > 0
        for position, reference in zip(ours, theirs, strict=True):
            assert position.keys() == reference.keys()
            for token_id, logprob in position.items():
                assert abs(logprob.logprob - reference[token_id].logprob) <= 1e-4


def test_rank0_holds_only_its_shard(tp1, tp2):
    model = tp2.engine.executor.model_runner.model
    full = tp1.engine.executor.model_runner.model
    attention, mlp = model.layers[0].self_attn, model.layers[0].mlp
    assert (attention.num_heads, attention.num_kv_heads) == (6, 2)
    assert attention.qkv_proj.shape == (576, (6 + 2 + 2) * 64)  # stored [in, out]
    assert attention.o_proj.shape == (6 * 64, 576)
    assert mlp.gate_up_proj.shape == (576, 2 * 768) and mlp.down_proj.shape == (768, 576)
    assert model.embed_tokens.shape == (24576, 576)
    assert attention.key_cache.shape[2:] == (2, 64)  # its own 2 KV heads
    shard_bytes = sum(p.numel() for p in model.parameters())
    full_bytes = sum(p.numel() for p in full.parameters())
    assert shard_bytes < 0.62 * full_bytes  # 6/9 of attention, 1/2 of MLP and vocabulary


def test_too_many_ranks_is_a_value_error_naming_tensor_parallel_size():
    with pytest.raises(ValueError, match="tensor_parallel_size 4 exceeds"):
        LLM(**ENGINE_TEST_OPTIONS, tensor_parallel_size=4)


def test_a_second_tensor_parallel_engine_in_one_process_is_refused(tp2, tiny_model_dir):
    with pytest.raises(RuntimeError, match="already runs in this process"):
        LLM(str(tiny_model_dir), kv_cache_memory_bytes=20_000_000, tensor_parallel_size=2)


def test_close_stops_the_worker_ranks(tp2):
    pids = tp2.engine.executor.worker_pids
    assert len(pids) == 1 and _alive(pids[0])
    tp2.close()
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="shut down"):
        tp2.generate(PROMPTS[:1], SamplingParams(max_tokens=2), use_tqdm=False)


def test_workers_exit_with_the_engine_process_without_close(tiny_model_dir):
    """A script that never closes its LLM: the worker ranks still exit with it."""
    script = (
        "from kaon import LLM\n"
        f"llm = LLM({str(tiny_model_dir)!r}, kv_cache_memory_bytes=20_000_000,"
        " tensor_parallel_size=2)\n"
        "print(llm.engine.executor.worker_pids)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    pids = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(pids) == 1
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids)


def test_a_dead_rank_is_a_clear_error_not_a_hang(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("KAON_TP_TIMEOUT", "60")
    llm = LLM(str(tiny_model_dir), kv_cache_memory_bytes=20_000_000, tensor_parallel_size=2)
    try:
        (pid,) = llm.engine.executor.worker_pids
        params = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
        assert len(llm.generate(["Hi"], SamplingParams(max_tokens=2), use_tqdm=False)) == 1
        errors: list[BaseException] = []

        def run() -> None:
            try:
                llm.generate(["Tell me a long story."] * 4, params, use_tqdm=False)
            except BaseException as error:  # noqa: BLE001 - the test inspects it
                errors.append(error)

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(1.0)  # mid-generation: rank 0 is stepping
        os.kill(pid, 9)
        thread.join(timeout=90)
        assert not thread.is_alive(), "the engine hung after rank 1 died"
        assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
        assert "rank 1" in str(errors[0]) and "-9" in str(errors[0])
        with pytest.raises(RuntimeError, match="rank 1"):  # the engine stays stopped
            llm.generate(["Hi"], SamplingParams(max_tokens=2), use_tqdm=False)
    finally:
        llm.close()
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
