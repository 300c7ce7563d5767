"""Speculative decoding on the real default model: greedy token ids identical to speculation off
(52 prompts, batched, different lengths; n-gram and suffix; with preemption; with stop strings,
min_tokens, penalties and logprobs), every KV cache block back in the pool afterwards, and seeded
sampling whose token frequencies agree with speculation off (chi-square).

Exactness: verification runs each draft position as a decode row (the decode attention kernel,
one query row each), so only the matmuls see more rows than without speculation; MKL's float32
GEMM gives the same row results for any batch of 4 rows or more, which every batch below has
with speculation on and off alike.
"""

from collections import Counter

import pytest
import torch

from kaon import LLM, SamplingParams
from kaon.sample.sampler import Sampler
from kaon.spec_decode.config import SpeculativeConfig
from kaon.spec_decode.drafter import Drafter
from kaon.spec_decode.ngram_proposer import NgramProposer
from kaon.spec_decode.rejection_sampler import verify_drafts
from kaon.worker.request_state import CachedRequestState
from kaon.worker.sampling_inputs import build_sampling_metadata
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
    options = {"kv_cache_memory_bytes": 24_000_000, "max_model_len": 512, "quantization": "none"}
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


def _two_sample_chi_square(first: list[int], second: list[int]) -> tuple[float, int]:
    """Homogeneity chi-square of two equal-size samples over the tokens seen >= 10 times in
    both together; returns (statistic, degrees of freedom)."""
    counts_first, counts_second = Counter(first), Counter(second)
    common = [t for t in counts_first | counts_second if counts_first[t] + counts_second[t] >= 10]
    statistic = 0.0
    for token in common:
        expected = (counts_first[token] + counts_second[token]) / 2
        for counts in (counts_first, counts_second):
            statistic += (counts[token] - expected) ** 2 / expected
    return statistic, len(common) - 1


def test_sampling_frequencies_agree_with_speculation_off(spec_llm):
    """2,000 seeded samples (temperature 1, top_k 20) from the model's distributions on a fixed
    prompt: the plain sampler (speculation off) and the rejection sampler verifying the n-gram
    draft give the same token frequencies at the first position, and, after an accepted draft,
    at the bonus position (two-sample chi-square over tokens seen >= 10 times, p = 0.001)."""
    engine = spec_llm.engine
    prompt = engine.tokenizer.encode("one two three four five one two three four five one two")
    draft = NgramProposer(1, 4).propose(prompt, 1)
    full = engine.prompt_logits(prompt + draft)[-2:]  # [2, vocab]: p0, then p1 given the draft
    # top_k 20 leaves only each row's 20 best tokens: sampling over the 64 best of either row
    # (and the draft) is the same distribution, over a small vocabulary (ids remapped below).
    vocab = sorted(set(full.topk(64, dim=-1).indices.flatten().tolist()) | set(draft))
    logits = full[:, vocab]
    draft = [vocab.index(draft[0])]
    num = 2000
    params = SamplingParams(temperature=1.0, top_k=20)
    off_first, on_tokens = [], []
    for chunk in range(0, num, 250):  # 250 rows at a time: [500, vocab] float32 tensors
        seeds = range(chunk, chunk + 250)
        states = [_state(params, seed) for seed in seeds]
        metadata = build_sampling_metadata(states, len(vocab), logits.device)
        off_first += Sampler()(logits[:1].repeat(250, 1), metadata).sampled_token_ids.tolist()
        row_states = [_state(params, None) for _ in range(500)]
        metadata = build_sampling_metadata(row_states, len(vocab), "cpu")
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        verified = verify_drafts(logits.repeat(250, 1), metadata, [draft] * 250, generators)
        on_tokens += verified.token_ids
    on_first = [tokens[0] for tokens in on_tokens]
    statistic, df = _two_sample_chi_square(off_first, on_first)
    assert df >= 2 and statistic < chi_square_critical(df)
    # Bonus tokens after an accepted draft vs plain samples from p1.
    bonus = [tokens[1] for tokens in on_tokens if len(tokens) == 2]
    assert 100 < len(bonus) < num  # the draft is accepted sometimes, rejected sometimes
    states = [_state(params, 10_000 + i) for i in range(len(bonus))]
    metadata = build_sampling_metadata(states, len(vocab), "cpu")
    off_bonus = Sampler()(logits[1:].repeat(len(bonus), 1), metadata).sampled_token_ids.tolist()
    statistic, df = _two_sample_chi_square(off_bonus, bonus)
    assert df >= 1 and statistic < chi_square_critical(df)


def _state(params: SamplingParams, seed: int | None) -> CachedRequestState:
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return CachedRequestState("r", [], params, generator, [])


def test_seeded_sampling_reproducible_with_speculation(spec_llm):
    drafter = _use(spec_llm, method="ngram", num_speculative_tokens=3, prompt_lookup_min=1,
                   **ALWAYS)  # fmt: skip
    prompt = "one two three four five one two three four five one two three four five one"
    params = [SamplingParams(temperature=0.8, max_tokens=6, seed=i, ignore_eos=True)
              for i in range(6)]  # fmt: skip
    first = token_ids(spec_llm.generate([prompt] * 6, params, use_tqdm=False))
    again = token_ids(spec_llm.generate([prompt] * 6, params, use_tqdm=False))
    assert first == again and len(set(map(tuple, first))) > 1
    assert drafter.stats.num_accepted_tokens > 0
    assert_all_blocks_free(spec_llm)


def test_constrained_rows_among_drafted_rows(llm, spec_llm):
    """Verification masks the constrained rows (they get no drafts) between drafted ones: the
    same greedy tokens as speculation off, the JSON valid, the drafted rows unchanged."""
    import json

    import jsonschema

    from kaon import StructuredOutputsParams
    from kaon.benchmarks.structured_schemas import SCHEMAS

    structured = StructuredOutputsParams(json=SCHEMAS["person"])
    constrained = SamplingParams(temperature=0, max_tokens=40, structured_outputs=structured)
    # Four unconstrained rows to the end keep every batch at 4+ rows (see the module docstring).
    free = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    params = [free, constrained, free, free, constrained, free]
    prompts = [PROMPTS[0], "A person:", PROMPTS[1], PROMPTS[2], "Another person:", PROMPTS[3]]
    expected = token_ids(llm.generate(prompts, params, use_tqdm=False))
    outputs = spec_llm.generate(prompts, params, use_tqdm=False)
    assert token_ids(outputs) == expected
    for index in (1, 4):
        jsonschema.validate(json.loads(outputs[index].outputs[0].text), SCHEMAS["person"])
    assert_all_blocks_free(spec_llm)
