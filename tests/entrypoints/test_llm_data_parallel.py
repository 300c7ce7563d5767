"""LLM(data_parallel_size=2): two engine processes give the DP=1 greedy outputs, in input order,
keep working after a bad request, and leave no process behind."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from kaon import LLM, SamplingParams
from tests.conftest import ENGINE_TEST_OPTIONS

GREEDY = SamplingParams(temperature=0.0, max_tokens=8)
PROMPTS = [f"Fact number {i} about the moon:" for i in range(9)]


@pytest.fixture(scope="module")
def dp_llm():
    with LLM(data_parallel_size=2, **ENGINE_TEST_OPTIONS) as llm:
        yield llm


def token_ids(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_dp2_equals_dp1_in_input_order(dp_llm, llm):
    assert dp_llm.engine is None and dp_llm.tokenizer.encode("hi") == llm.tokenizer.encode("hi")
    reference = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    outputs = dp_llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert token_ids(outputs) == token_ids(reference)
    assert [o.outputs[0].text for o in outputs] == [o.outputs[0].text for o in reference]
    assert [o.prompt_token_ids for o in outputs] == [o.prompt_token_ids for o in reference]
    # Request ids come from the main LLM: unique and increasing across calls.
    assert [o.request_id for o in outputs] == [str(i) for i in range(len(PROMPTS))]
    # Per-prompt SamplingParams follow their prompt to its replica; one prompt goes to one.
    params = [SamplingParams(temperature=0.0, max_tokens=1 + i % 3) for i in range(len(PROMPTS))]
    outputs = dp_llm.generate(PROMPTS, params, use_tqdm=False)
    assert [len(ids) for ids in token_ids(outputs)] == [1 + i % 3 for i in range(len(PROMPTS))]
    single = dp_llm.generate(PROMPTS[0], GREEDY, use_tqdm=False)
    assert token_ids(single) == token_ids(reference[:1])
    conversations = [[{"role": "user", "content": "Name a color."}]] * 3
    assert token_ids(dp_llm.chat(conversations, GREEDY, use_tqdm=False)) == token_ids(
        llm.chat(conversations, GREEDY, use_tqdm=False)
    )


def test_bad_prompt_raises_and_replicas_keep_serving(dp_llm, llm):
    with pytest.raises(ValueError, match="prompt"):
        dp_llm.generate(["fine", "also fine", [10**9]], GREEDY, use_tqdm=False)  # bad token id
    outputs = dp_llm.generate(PROMPTS[:3], GREEDY, use_tqdm=False)
    assert token_ids(outputs) == token_ids(llm.generate(PROMPTS[:3], GREEDY, use_tqdm=False))


def test_close_and_dead_replica_leave_no_processes():
    with pytest.raises(ValueError, match="data_parallel_size must be a positive integer"):
        LLM(data_parallel_size=0)
    llm = LLM(data_parallel_size=2, **ENGINE_TEST_OPTIONS)
    processes = list(llm._data_parallel._processes)
    assert all(p.is_alive() for p in processes)
    os.kill(processes[1].pid, signal.SIGKILL)  # a replica dies: a clear error, no hang
    with pytest.raises(RuntimeError, match="replica 1 died"):
        llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert not any(p.is_alive() for p in processes)  # the survivor was stopped too
    with pytest.raises(RuntimeError, match="closed"):
        llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    llm.close()  # idempotent
    assert not set(processes) & set(multiprocessing.active_children())
