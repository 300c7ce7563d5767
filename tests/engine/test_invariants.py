"""Invariants of the engine on the real default model (style guide rule 18):
batched == one by one, chunked prefill == whole prefill, prefix-cache hit == miss, preempted ==
not preempted, all under greedy decoding (exact token ids), and seeded sampling independent of
the batch. After each test every KV cache block is back in the pool.
"""

import pytest

from kaon import LLM, SamplingParams
from tests.conftest import ENGINE_TEST_OPTIONS, assert_all_blocks_free

SYSTEM = (
    "<|im_start|>system\nYou are a concise assistant. Answer in one short sentence and never use "
    "lists.<|im_end|>\n"
)
QUESTIONS = [
    "What is the capital of France?",
    "Name a primary color.",
    "How many legs does a spider have?",
    "What is 2 + 2?",
    "Write a haiku about the sea.",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish.",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "Give me a synonym for happy.",
    "What planet is known as the red planet?",
    "Describe a cat in five words.",
    "What is the largest ocean on Earth?",
    "How many days are in a leap year?",
    "What language is spoken in Brazil?",
    "Suggest a name for a goldfish.",
]
PROMPTS = [
    f"{SYSTEM}<|im_start|>user\n{question * (1 + i % 3)}<|im_end|>\n<|im_start|>assistant\n"
    for i, question in enumerate(QUESTIONS)
]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def reference(llm) -> list[list[int]]:
    """Greedy outputs of each prompt generated alone, with the prefix cache emptied each time."""
    outputs = []
    for prompt in PROMPTS:
        llm.engine.kv_cache_manager.block_pool.reset_prefix_cache()
        (output,) = llm.generate([prompt], GREEDY, use_tqdm=False)
        outputs.append(output.outputs[0].token_ids)
    assert len({len(llm.tokenizer.encode(p)) for p in PROMPTS}) > 8  # really different lengths
    return outputs


def token_ids(outputs) -> list[list[int]]:
    return [output.outputs[0].token_ids for output in outputs]


def test_batched_equals_one_at_a_time(llm, reference):
    llm.engine.kv_cache_manager.block_pool.reset_prefix_cache()
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == reference
    assert_all_blocks_free(llm)


def test_prefix_cache_hits_give_the_same_tokens(llm, reference):
    llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)  # caches the shared system prompt
    before = llm.engine.kv_cache_manager.block_pool.num_hit_blocks
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert llm.engine.kv_cache_manager.block_pool.num_hit_blocks > before
    assert all(output.num_cached_tokens >= 16 for output in outputs)
    assert token_ids(outputs) == reference
    assert_all_blocks_free(llm)


def test_small_prefill_chunks_give_the_same_tokens(reference):
    chunked = LLM(**ENGINE_TEST_OPTIONS, max_num_batched_tokens=16, enable_prefix_caching=False)
    assert token_ids(chunked.generate(PROMPTS, GREEDY, use_tqdm=False)) == reference
    assert_all_blocks_free(chunked)


def test_preemption_gives_the_same_tokens(reference, llm):
    # Room for about 5 of the 16 requests at once: the scheduler must preempt and recompute.
    per_token = llm.engine.arch_config.kv_bytes_per_token * 4
    small = LLM(kv_cache_memory_bytes=per_token * 400, max_model_len=256, quantization="none")
    outputs = small.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert small.engine.stats().num_preemptions > 0
    assert token_ids(outputs) == reference
    assert_all_blocks_free(small)


def test_seeded_sampling_is_independent_of_the_batch(llm):
    seeded = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, max_tokens=20, seed=1234)
    (alone,) = llm.generate([PROMPTS[3]], seeded, use_tqdm=False)
    others = SamplingParams(temperature=1.0, max_tokens=20)
    batch = llm.generate(
        PROMPTS[:3] + [PROMPTS[3]] + PROMPTS[4:8],
        [others] * 3 + [seeded] + [others] * 4,
        use_tqdm=False,
    )
    assert batch[3].outputs[0].token_ids == alone.outputs[0].token_ids
    (again,) = llm.generate([PROMPTS[3]], seeded, use_tqdm=False)
    assert again.outputs[0].token_ids == alone.outputs[0].token_ids
    different = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, max_tokens=20, seed=4321)
    (other_seed,) = llm.generate([PROMPTS[3]], different, use_tqdm=False)
    assert other_seed.outputs[0].token_ids != alone.outputs[0].token_ids
    assert_all_blocks_free(llm)
