"""64 concurrent streaming requests of mixed lengths: all complete, each equal to its offline
greedy result (32 run at once on the server, 32 wait in its queue)."""

from __future__ import annotations

import asyncio

import openai

from tests.entrypoints.utils import API_KEY, MODEL_NAME, ServerProcess, offline_greedy

NUM_REQUESTS = 64


def _workload() -> tuple[list[str], list[int]]:
    topics = ["the sea", "a robot", "Paris", "winter", "a cat", "music", "the moon", "bread"]
    prompts = [
        f"Request {i}. Write about {topics[i % len(topics)]}." + " Be brief." * (i % 7)
        for i in range(NUM_REQUESTS)
    ]
    max_tokens = [2 + (i * 5) % 23 for i in range(NUM_REQUESTS)]  # 2 .. 24 tokens
    return prompts, max_tokens


async def _stream_all(server: ServerProcess, prompts: list[str], max_tokens: list[int]):
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)

    async def one(prompt: str, budget: int) -> tuple[str, str | None, int]:
        stream = await client.completions.create(
            model=MODEL_NAME, prompt=prompt, max_tokens=budget, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        text, reason, num_tokens = "", None, -1
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
                reason = chunk.choices[0].finish_reason or reason
            if chunk.usage is not None:
                num_tokens = chunk.usage.completion_tokens
        return text, reason, num_tokens

    try:
        return await asyncio.wait_for(
            asyncio.gather(*(one(p, m) for p, m in zip(prompts, max_tokens, strict=True))),
            timeout=600,
        )
    finally:
        await client.close()


def test_64_concurrent_streams_equal_offline(server: ServerProcess, offline_llm) -> None:
    prompts, max_tokens = _workload()
    results = asyncio.run(_stream_all(server, prompts, max_tokens))
    expected = offline_greedy(offline_llm, prompts, max_tokens)
    for index, ((text, reason, num_tokens), reference) in enumerate(
        zip(results, expected, strict=True)
    ):
        assert text == reference.text, f"request {index}"
        assert reason == reference.finish_reason, f"request {index}"
        assert num_tokens == len(reference.token_ids), f"request {index}"
    assert server.wait_for_metric("kaon:num_requests_running", 0.0) == 0.0
    assert server.wait_for_metric("kaon:kv_cache_usage_perc", 0.0) == 0.0
