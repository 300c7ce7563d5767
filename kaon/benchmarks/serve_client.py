"""One streaming request to an OpenAI-compatible server, timed chunk by chunk.

Works against any server that speaks the OpenAI streaming format (server-sent events, one
``data: {json}`` line per chunk, ``data: [DONE]`` at the end): kaon, llama.cpp's server
(llama-cpp-python), ``transformers serve``, vLLM. Times use ``time.perf_counter`` (seconds).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx


@dataclass
class RequestResult:
    """What one request measured; times in seconds from sending the request.

    ``chunk_times`` are the arrival times of every chunk that carried text; TTFT is the first,
    the inter-token latencies (ITL) are the gaps between them. A server may put several tokens
    in one chunk, so ITL is per chunk, as in vLLM's benchmark_serving.
    """

    index: int  # the prompt's index in this load level
    success: bool = False
    error: str | None = None
    text: str = ""
    ttft: float | None = None
    e2e: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None  # from usage, when the server sent it
    output_tokens: int | None = None  # from usage, else counted by the tokenizer
    output_tokens_source: str | None = None  # "usage" | "tokenizer"
    finish_reason: str | None = None
    start_time: float = 0.0  # perf_counter when sent, to place the request in the run

    @property
    def itl(self) -> list[float]:
        """Inter-token (inter-chunk) latencies, seconds."""
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (e2e - TTFT) / (output tokens - 1), seconds.

        None for failed requests or when fewer than two tokens came back.
        """
        if not self.success or self.ttft is None or self.e2e is None:
            return None
        if self.output_tokens is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    def as_json(self) -> dict[str, Any]:
        record = asdict(self)
        record.update(itl=self.itl, tpot=self.tpot)
        return record


def request_body(
    endpoint: str,
    model: str | None,
    prompt: str,
    max_tokens: int,
    ignore_eos: bool,
    temperature: float,
    extra_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of a streaming completions or chat completions request.

    ``ignore_eos`` is a vLLM extension that kaon honours; servers that do not know it
    (llama.cpp's Python server) ignore it and may stop early at end-of-sequence; for those,
    ``extra_body`` can carry ``{"logit_bias": {"<eos id>": -100}}`` instead. ``extra_body``'s
    keys are added last and override the ones set here.
    """
    body: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if model:
        body["model"] = model
    if ignore_eos:
        body["ignore_eos"] = True
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    body.update(extra_body or {})
    return body


def _chunk_text(chunk: dict[str, Any], endpoint: str) -> tuple[str, str | None]:
    choices = chunk.get("choices") or []
    if not choices:
        return "", None
    choice = choices[0]
    if endpoint == "chat":
        text = (choice.get("delta") or {}).get("content") or ""
    else:
        text = choice.get("text") or ""
    return text, choice.get("finish_reason")


async def send_request(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    endpoint: str,
    index: int,
    headers: dict[str, str] | None = None,
) -> RequestResult:
    """POST ``body`` to ``url`` with streaming and time every chunk.

    Never raises for a server or network failure: the result then has ``success`` False and
    ``error`` set (HTTP status and body, or the exception).
    """
    result = RequestResult(index=index)
    start = time.perf_counter()
    result.start_time = start
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                content = (await response.aread()).decode(errors="replace")[:500]
                result.error = f"HTTP {response.status_code}: {content}"
                return result
            async for line in response.aiter_lines():
                line = line.strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = json.dumps(chunk["error"])[:500]
                    return result
                text, finish_reason = _chunk_text(chunk, endpoint)
                if text:
                    now = time.perf_counter() - start
                    if result.ttft is None:
                        result.ttft = now
                    result.chunk_times.append(now)
                    result.text += text
                if finish_reason:
                    result.finish_reason = finish_reason
                usage = chunk.get("usage")
                if usage:
                    result.prompt_tokens = usage.get("prompt_tokens")
                    result.output_tokens = usage.get("completion_tokens")
                    result.output_tokens_source = "usage"
        result.e2e = time.perf_counter() - start
        if result.ttft is None:
            result.error = "no text in the response"
            return result
        result.success = True
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as error:
        result.error = f"{type(error).__name__}: {error}"
    return result
