"""Speculative decoding on the real default model: greedy token ids identical to speculation off
(52 prompts, batched, different lengths; n-gram and suffix; with preemption; with stop strings,
min_tokens, penalties and logprobs), every KV cache block back in the pool afterwards, and seeded
sampling whose token frequencies agree with speculation off (chi-square).

Exactness: verification runs each draft position as a decode row (the decode attention kernel,
one query row each), so only the matmuls see more rows than without speculation; MKL's float32
GEMM gives the same row results for any batch of 4 rows or more, which every batch below has
with speculation on and off alike.
"""

import pytest

from kaon import LLM, SamplingParams
from kaon.spec_decode.config import SpeculativeConfig
from kaon.spec_decode.drafter import Drafter
from tests.conftest import ENGINE_TEST_OPTIONS, assert_all_blocks_free
from tests.spec_decode.test_proposers_scheduler import chi_square_critical

SENTENCES = [
    "The cat sat on the mat and looked at the rain.",
    "Paris is the capital of France and a city of museums.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the door, smiled, and said good morning to everyone.",
    "Plants turn sunlight, water and carbon dioxide into sugar.",
    "The train to Berlin leaves at nine and arrives at noon.",
    "Mix flour, eggs and milk, then bake the batter for twenty minutes.",
    "Our team fixed the bug, wrote a test and shipped the release.",
]
TASKS = ["Repeat this text exactly: {}\nText: ", "Copy the sentence: {}\nCopy: ", "Say more: {}\n"]
PROMPTS = [
    TASKS[i % 3].format(" ".join(SENTENCES[j % 8] for j in range(i, i + 1 + i % 4)))
    for i in range(52)
]
PARAMS = [SamplingParams(temperature=0, max_tokens=8 + 4 * (i % 5)) for i in range(52)]
ALWAYS = {"max_num_verify_rows": 100_000}  # draft at any batch size, to test exactness under load


def token_ids(outputs) -> list[list[int]]:
    return [output.outputs[0].token_ids for output in outputs]


@pytest.fixture(scope="module")
def spec_llm():
    config = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, **ALWAYS}
    engine = LLM(**ENGINE_TEST_OPTIONS, speculative_config=config)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(llm) -> list[list[int]]:
    outputs = token_ids(llm.generate(PROMPTS, PARAMS, use_tqdm=False))
    assert_all_blocks_free(llm)
    return outputs


def _use(spec_llm, **config) -> Drafter:
    """Swap in a fresh drafter with these options (one engine load serves every test)."""
    engine = spec_llm.engine
    drafter = Drafter(SpeculativeConfig(**config), engine.max_model_len)
    engine.scheduler.drafter = drafter
    return drafter


@pytest.mark.parametrize(("method", "num_prompts"), [("ngram", 52), ("suffix", 16)])
def test_greedy_equals_speculation_off(spec_llm, reference, method, num_prompts):
    drafter = _use(spec_llm, method=method, num_speculative_tokens=4, prompt_lookup_min=1,
                   **ALWAYS)  # fmt: skip
    outputs = spec_llm.generate(PROMPTS[:num_prompts], PARAMS[:num_prompts], use_tqdm=False)
    assert token_ids(outputs) == reference[:num_prompts]
    assert_all_blocks_free(spec_llm)
    stats = drafter.stats
    assert stats.num_drafts > 50 and 0 < stats.num_accepted_tokens < stats.num_draft_tokens
    assert stats.num_accepted_tokens_per_pos[0] >= stats.num_accepted_tokens_per_pos[-1] > 0


def test_greedy_with_preemption(llm, reference):
    config = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, **ALWAYS}
    options = {"kv_cache_memory_bytes": 24_000_000, "max_model_len": 512}  # ~500 tokens
    small = LLM(**options, speculative_config=config)
    try:
        assert (
            token_ids(small.generate(PROMPTS[:20], PARAMS[:20], use_tqdm=False)) == (reference[:20])
        )
        assert small.engine.stats().num_preemptions > 0
        assert small.engine.stats().spec_decode.num_accepted_tokens > 0
        assert_all_blocks_free(small)
    finally:
        small.close()


def test_stop_strings_min_tokens_penalties_logprobs(llm, spec_llm):
    _use(spec_llm, method="ngram", num_speculative_tokens=4, prompt_lookup_min=1, **ALWAYS)
    prompts = PROMPTS[:6]
    text = llm.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=24),
                        use_tqdm=False)[0].outputs[0].text  # fmt: skip
    stop = text.split()[6]  # a word in the middle of the output
    params = [
        SamplingParams(temperature=0, max_tokens=24, stop=[stop]),
        SamplingParams(temperature=0, max_tokens=24, min_tokens=20, stop_token_ids=[13]),
        SamplingParams(temperature=0, max_tokens=24, frequency_penalty=0.5, presence_penalty=0.3),
        SamplingParams(temperature=0, max_tokens=24, repetition_penalty=1.3),
        SamplingParams(temperature=0, max_tokens=24, logprobs=3),
        SamplingParams(temperature=0, max_tokens=17, logit_bias={13: -100.0}),
    ]
    off = llm.generate(prompts, params, use_tqdm=False)
    on = spec_llm.generate(prompts, params, use_tqdm=False)
    for a, b in zip(off, on, strict=True):
        assert b.outputs[0].token_ids == a.outputs[0].token_ids
        assert b.outputs[0].text == a.outputs[0].text
        assert b.outputs[0].finish_reason == a.outputs[0].finish_reason
    assert off[0].outputs[0].finish_reason == "stop" and stop not in off[0].outputs[0].text
    lp_off, lp_on = off[4].outputs[0].logprobs, on[4].outputs[0].logprobs
    assert len(lp_on) == len(lp_off) == 24
    for position_off, position_on in zip(lp_off, lp_on, strict=True):
        assert list(position_on) == list(position_off)
        for token_id, logprob in position_off.items():
            assert position_on[token_id].logprob == pytest.approx(logprob.logprob, abs=1e-4)
            assert position_on[token_id].rank == logprob.rank
    assert_all_blocks_free(spec_llm)


def test_sampling_frequencies_agree_with_speculation_off(llm, spec_llm):
    """2,000 seeded samples of 3 tokens (temperature 1, top_k 5) on a fixed repetitive prompt:
    the 2nd and 3rd tokens (those that go through verification) have the same frequencies with
    speculation on and off (two-sample chi-square over tokens seen >= 10 times, p = 0.001)."""
    drafter = _use(spec_llm, method="ngram", num_speculative_tokens=2, prompt_lookup_min=1,
                   **ALWAYS)  # fmt: skip
    prompt = "one two three four five one two three four five one two three four five one"
    params = [SamplingParams(temperature=1.0, top_k=5, max_tokens=3, seed=i, ignore_eos=True)
              for i in range(2000)]  # fmt: skip
    off = token_ids(llm.generate([prompt] * 2000, params, use_tqdm=False))
    on = token_ids(spec_llm.generate([prompt] * 2000, params, use_tqdm=False))
    assert drafter.stats.num_drafts > 1000
    assert 0 < drafter.stats.num_accepted_tokens < drafter.stats.num_draft_tokens
    for position in (1, 2):
        counts_off, counts_on = {}, {}
        for tokens, counts in [(t, counts_off) for t in off] + [(t, counts_on) for t in on]:
            counts[tokens[position]] = counts.get(tokens[position], 0) + 1
        common = [t for t in counts_off if counts_off[t] + counts_on.get(t, 0) >= 10]
        statistic = 0.0
        for token in common:
            total = counts_off[token] + counts_on.get(token, 0)
            for counts in (counts_off, counts_on):
                expected = total / 2  # both samples have 2,000 draws
                statistic += (counts.get(token, 0) - expected) ** 2 / expected
        assert len(common) >= 2
        assert statistic < chi_square_critical(len(common) - 1), (counts_off, counts_on)
    # Seeds reproduce with speculation on.
    again = token_ids(spec_llm.generate([prompt] * 50, params[:50], use_tqdm=False))
    assert again == on[:50]
    assert_all_blocks_free(spec_llm)
