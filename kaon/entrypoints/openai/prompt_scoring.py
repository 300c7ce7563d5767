"""Legacy prompt scoring on /v1/completions: ``max_tokens: 0`` (with ``echo`` and ``logprobs``,
the call lm-evaluation-harness-style tools make to score a text).

The engine always generates at least one token (SamplingParams.max_tokens >= 1), and the
prompt's logprobs come out of the same prefill that samples it. So a ``max_tokens: 0`` request
runs as ``max_tokens: 1`` with ``prompt_logprobs``, and the one generated token is dropped
here: each choice ends with no text, no tokens, ``finish_reason: "length"`` (the budget of 0 is
spent, as OpenAI reports it) and counts 0 completion tokens. The prompt logprobs are exactly
those a ``max_tokens: 1`` + echo request returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from kaon.outputs import RequestOutput

ENGINE_MAX_TOKENS = 1  # what a max_tokens: 0 request asks of the engine


def engine_max_tokens(max_tokens: int | None) -> int | None:
    """The engine's budget for a request's ``max_tokens`` (0 becomes one dropped token)."""
    return ENGINE_MAX_TOKENS if max_tokens == 0 else max_tokens


async def drop_generated(
    outputs: AsyncIterator[tuple[int, RequestOutput]],
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, output) pairs with every generated token removed; prompt logprobs kept."""
    async for index, output in outputs:
        completions = [
            dataclasses.replace(
                completion,
                text="",
                token_ids=[],
                cumulative_logprob=None,
                logprobs=[] if completion.logprobs is not None else None,
                finish_reason="length" if completion.finish_reason is not None else None,
                stop_reason=None,
            )  # fmt: skip
            for completion in output.outputs
        ]
        yield index, dataclasses.replace(output, outputs=completions)
