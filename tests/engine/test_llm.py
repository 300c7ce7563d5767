"""The offline LLM API on the real default model: exact greedy text, stop strings, UTF-8, logprobs,
n > 1, bad input and aborts. Every test leaves every KV cache block back in the pool."""

import math

import pytest
import torch

from kaon import SamplingParams
from tests.conftest import assert_all_blocks_free

GREEDY = SamplingParams(temperature=0, max_tokens=20)
FRANCE = "The capital of France is"
# Greedy continuation of FRANCE (20 tokens, float32), equal to transformers' on the same GGUF.
FRANCE_TEXT = " Paris.\n\nThe answer is: 2018-01-22 "
FRANCE_IDS = [
    7042,
    30,
    198,
    198,
    504,
    2988,
    314,
    42,
    216,
    34,
    32,
    33,
    40,
    29,
    32,
    33,
    29,
    34,
    34,
    216,
]


def test_greedy_text_and_token_ids(llm):
    (output,) = llm.generate(FRANCE, GREEDY, use_tqdm=False)
    completion = output.outputs[0]
    assert completion.text == FRANCE_TEXT
    assert completion.token_ids == FRANCE_IDS
    assert completion.finish_reason == "length"
    assert output.prompt == FRANCE and output.prompt_token_ids == llm.tokenizer.encode(FRANCE)
    metrics = output.metrics
    assert 0 < metrics.time_to_first_token <= metrics.e2e_latency
    assert metrics.num_generation_tokens == 20
    assert_all_blocks_free(llm)


def test_chat_haiku(llm):
    messages = [{"role": "user", "content": "Write a haiku about the sea"}]
    (output,) = llm.chat(messages, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    assert output.outputs[0].text == "In the depths of the ocean, a lone soul,\n"
    assert output.prompt.startswith("<|im_start|>system\n")
    assert output.prompt.endswith("<|im_start|>assistant\n")


def test_token_id_prompts_equal_text_prompts(llm):
    ids = llm.tokenizer.encode(FRANCE)
    (output,) = llm.generate([ids], GREEDY, use_tqdm=False)
    assert output.outputs[0].token_ids == FRANCE_IDS and output.prompt is None


@pytest.mark.parametrize(
    ("stop", "text"),
    [
        ("answer is", " Paris.\n\nThe "),  # spans the tokens " answer" and " is"
        ("s: 20", " Paris.\n\nThe answer i"),  # spans " is", ":", " ", "2", "0"
        ("\n\n", " Paris."),
    ],
)
def test_stop_strings_spanning_tokens(llm, stop, text):
    params = SamplingParams(temperature=0, max_tokens=20, stop=[stop, "never appears"])
    (output,) = llm.generate(FRANCE, params, use_tqdm=False)
    completion = output.outputs[0]
    assert completion.text == text
    assert completion.finish_reason == "stop" and completion.stop_reason == stop
    assert len(completion.token_ids) < 20  # generation really stopped there
    assert_all_blocks_free(llm)


def test_stop_string_kept_when_asked(llm):
    params = SamplingParams(
        temperature=0, max_tokens=20, stop="answer is", include_stop_str_in_output=True
    )
    (output,) = llm.generate(FRANCE, params, use_tqdm=False)
    assert output.outputs[0].text == " Paris.\n\nThe answer is"


def test_stop_token_ids_and_eos(llm):
    params = SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[198])  # "\n"
    (output,) = llm.generate(FRANCE, params, use_tqdm=False)
    assert output.outputs[0].token_ids == FRANCE_IDS[:3]
    assert output.outputs[0].stop_reason == 198 and output.outputs[0].finish_reason == "stop"
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    (chat,) = llm.chat(messages, SamplingParams(temperature=0, max_tokens=200), use_tqdm=False)
    assert chat.outputs[0].finish_reason == "stop"  # ended by <|im_end|>, not the length
    assert chat.outputs[0].token_ids[-1] in llm.tokenizer.eos_token_ids


def test_multibyte_characters_round_trip(llm):
    prompt = "Emoji: 😀🎉🚀 CJK: 中文字符 日本語 한국어\n" * 3 + "Emoji:"
    params = SamplingParams(temperature=0, max_tokens=40, output_kind_delta=True)
    engine = llm.engine
    engine.add_request("utf8", prompt, params)
    deltas, final = [], None
    while engine.has_unfinished_requests():
        for output in engine.step():
            deltas.append(output.outputs[0].text)
            final = output
    text = "".join(deltas)
    # Only the last delta may end in U+FFFD: max_tokens can cut a character's bytes in two, and
    # then the text equals one-shot decoding of the ids, as in vLLM and llama.cpp.
    assert all("\ufffd" not in delta for delta in deltas[:-1])
    assert "\ufffd" not in text.removesuffix("\ufffd")
    assert any(ord(char) > 0x2000 for char in text)  # emoji / CJK really generated
    (whole,) = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=40), use_tqdm=False)
    assert text == whole.outputs[0].text == llm.tokenizer.decode(whole.outputs[0].token_ids)
    assert final.finished


def test_logprobs_are_consistent(llm):
    params = SamplingParams(temperature=0, max_tokens=6, logprobs=3, prompt_logprobs=2)
    (output,) = llm.generate(FRANCE, params, use_tqdm=False)
    completion = output.outputs[0]
    assert len(completion.logprobs) == 6
    total = 0.0
    for token_id, position in zip(completion.token_ids, completion.logprobs, strict=True):
        chosen = position[token_id]
        assert chosen.rank == 1  # greedy picks the most likely token
        assert 3 <= len(position) <= 4
        assert all(chosen.logprob >= other.logprob for other in position.values())
        assert chosen.decoded_token == llm.tokenizer.decode([token_id], skip_special_tokens=False)
        total += chosen.logprob
    assert completion.cumulative_logprob == pytest.approx(total)
    prompt_ids = output.prompt_token_ids
    assert output.prompt_logprobs[0] is None and len(output.prompt_logprobs) == len(prompt_ids)
    # Prompt logprobs equal a full forward pass's log-softmax at each position.
    from tests.models.test_llama_reference import kaon_logits

    reference = torch.log_softmax(kaon_logits(llm, prompt_ids), dim=-1)
    for position in range(1, len(prompt_ids)):
        entry = output.prompt_logprobs[position][prompt_ids[position]]
        assert entry.logprob == pytest.approx(
            reference[position - 1, prompt_ids[position]].item(), abs=1e-4
        )
    assert_all_blocks_free(llm)


def test_n_completions(llm):
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=7)
    (output,) = llm.generate(FRANCE, params, use_tqdm=False)
    assert [c.index for c in output.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in output.outputs}) == 3
    (again,) = llm.generate(FRANCE, params, use_tqdm=False)
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in output.outputs]
    (greedy,) = llm.generate(
        FRANCE, SamplingParams(n=2, temperature=0, max_tokens=20), use_tqdm=False
    )
    assert [c.token_ids for c in greedy.outputs] == [FRANCE_IDS, FRANCE_IDS]
    assert_all_blocks_free(llm)


def test_penalties_and_logit_bias_change_the_output(llm):
    messages = [{"role": "user", "content": "Write a haiku about the sea"}]
    plain = llm.chat(messages, SamplingParams(temperature=0, max_tokens=40), use_tqdm=False)
    penalized = llm.chat(
        messages,
        SamplingParams(temperature=0, max_tokens=40, repetition_penalty=1.5),
        use_tqdm=False,
    )
    plain_ids, penalized_ids = plain[0].outputs[0].token_ids, penalized[0].outputs[0].token_ids
    assert len(set(penalized_ids)) / len(penalized_ids) > len(set(plain_ids)) / len(plain_ids)
    biased = SamplingParams(temperature=0, max_tokens=3, logit_bias={30: 100.0})  # "."
    (output,) = llm.generate(FRANCE, biased, use_tqdm=False)
    assert output.outputs[0].token_ids == [30, 30, 30]


@pytest.mark.parametrize(
    ("prompt", "params", "field"),
    [
        ("", {}, "prompt"),
        ([], {}, "prompt"),
        ([1, 2, 49152], {}, "prompt"),
        ([-1], {}, "prompt"),
        ("x " * 3000, {}, "prompt"),
        (FRANCE, {"max_tokens": 0}, "max_tokens"),
        (FRANCE, {"max_tokens": -5}, "max_tokens"),
        (FRANCE, {"temperature": -0.1}, "temperature"),
        (FRANCE, {"top_p": 0.0}, "top_p"),
        (FRANCE, {"top_p": 1.5}, "top_p"),
        (FRANCE, {"n": 0}, "n"),
        (FRANCE, {"logit_bias": {49152: 1.0}}, "logit_bias"),
        (FRANCE, {"stop_token_ids": [10**9]}, "stop_token_ids"),
    ],
)
def test_bad_input_raises_value_error_and_other_requests_continue(llm, prompt, params, field):
    engine = llm.engine
    engine.add_request("in-flight", FRANCE, GREEDY)
    engine.step()
    with pytest.raises(ValueError, match=field):
        llm.generate(
            [FRANCE, prompt], SamplingParams(**params) if params else GREEDY, use_tqdm=False
        )
    final = None
    while engine.has_unfinished_requests():
        for output in engine.step():
            final = output
    assert final.request_id == "in-flight" and final.outputs[0].token_ids == FRANCE_IDS
    assert_all_blocks_free(llm)


def test_abort_returns_every_block(llm):
    engine = llm.engine
    engine.add_request("running", FRANCE, SamplingParams(temperature=0, max_tokens=200, n=2))
    for _ in range(3):
        engine.step()
    engine.add_request("waiting", FRANCE, GREEDY)
    assert engine.kv_cache_manager.usage() > 0
    (aborted, waiting) = engine.abort_request(["running", "waiting"])
    assert [c.finish_reason for c in aborted.outputs] == ["abort", "abort"]
    assert waiting.outputs[0].finish_reason == "abort"
    assert engine.abort_request(["unknown"]) == []
    engine.step()
    assert_all_blocks_free(llm)


def test_non_finite_logits_never_give_nan():
    from kaon.sample.metadata import SamplingMetadata
    from kaon.sample.sampler import Sampler

    logits = torch.tensor([[float("nan")] * 4, [float("-inf")] * 4, [0.0, float("inf"), 1.0, 2.0]])
    metadata = SamplingMetadata(
        all_greedy=False, all_random=True, temperature=torch.ones(3), top_k=None,
        top_p=torch.full((3,), 0.9), min_p=None, generators={}, output_token_counts=None,
        prompt_token_mask=None, presence_penalties=None, frequency_penalties=None,
        repetition_penalties=None, logit_bias=None, min_tokens_masks=[], max_num_logprobs=2,
    )  # fmt: skip
    output = Sampler()(logits, metadata)
    assert all(0 <= token < 4 for token in output.sampled_token_ids.tolist())
    assert output.sampled_token_ids[2].item() == 1
    assert all(math.isfinite(value) for value in output.logprobs.flatten().tolist())


def test_prompt_logits_leave_cached_prefixes_intact():
    """LLMEngine.prompt_logits takes its KV blocks from the free pool and gives them back: the
    blocks of a prefix cached before it keep their K/V (a fresh engine hands out blocks 0, 1, ..
    first, the ones a scratch prefill at blocks 0.. would overwrite) and are hit afterwards."""
    from kaon import LLM
    from tests.conftest import ENGINE_TEST_OPTIONS

    llm = LLM(**ENGINE_TEST_OPTIONS)
    engine = llm.engine
    block_size = engine.config.cache_config.block_size
    prompt = "Once upon a time, in a small village by the sea, there lived an old fisherman. " * 2
    params = SamplingParams(temperature=0, max_tokens=8)
    (first,) = llm.generate([prompt], params, use_tqdm=False)
    num_cached = (len(first.prompt_token_ids) - 1) // block_size
    assert num_cached >= 2
    cached = [
        block.block_id
        for block in engine.kv_cache_manager.block_pool.blocks
        if block.block_hash is not None
    ]
    assert set(range(num_cached)) <= set(cached)
    attention = engine.executor.model_runner.model.layers[0].self_attn
    keys_before = attention.key_cache[cached].clone()
    free_before = engine.kv_cache_manager.num_free_blocks

    other = llm.tokenizer.encode("def fibonacci(n): return n if n < 2 else fib(n - 1) " * 8)
    logits = engine.prompt_logits(other)
    assert logits.shape == (len(other), engine.arch_config.vocab_size)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert engine.kv_cache_manager.num_free_blocks == free_before
    assert torch.equal(attention.key_cache[cached], keys_before)

    hits_before = engine.kv_cache_manager.block_pool.num_hit_blocks
    (second,) = llm.generate([prompt], params, use_tqdm=False)
    assert engine.kv_cache_manager.block_pool.num_hit_blocks - hits_before == num_cached
    assert second.outputs[0].token_ids == first.outputs[0].token_ids
    assert_all_blocks_free(llm)
    with pytest.raises(ValueError, match="token_ids"):
        engine.prompt_logits([])
    with pytest.raises(ValueError, match="max_model_len"):
        engine.prompt_logits([1] * (engine.max_model_len + 1))
    with pytest.raises(ValueError, match=r"token_ids\[1\] = 49152 is outside \[0, 49152\)"):
        engine.prompt_logits([1, 49152])
    with pytest.raises(ValueError, match=r"token_ids\[0\] = -1"):
        engine.prompt_logits([-1])
    with pytest.raises(ValueError, match=r"token_ids\[2\] must be an int"):
        engine.prompt_logits([1, 2, "a"])
    assert engine.kv_cache_manager.num_free_blocks == free_before
