"""Hostile requests under load, on the shared session server (issue 16):

- a bounded fuzz run: a few hundred generated requests over every field of /v1/completions and
  /v1/chat/completions, 8 at a time: no 5xx (nor an SSE error event), /health 200 throughout,
  every KV cache block free and the same greedy output at the end;
- pace: while 16 MB requests are being rejected, and while a request with the largest allowed
  stop / logit_bias / stop_token_ids lists runs, /health answers within 1 s and a concurrent
  stream's time per token stays within 2x of its pace alone (a ratio measured here).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx

from kaon.sampling_params import MAX_LOGIT_BIAS, MAX_STOP, MAX_STOP_CHARS, MAX_STOP_TOKEN_IDS
from tests.entrypoints.utils import ServerProcess

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
NUM_FUZZ_REQUESTS = 200
GREEDY = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
USER = [{"role": "user", "content": "Hi"}]

# Values any field may get: wrong types, edges, overflows, hostile strings.
HOSTILE = [
    None, True, False, 0, 1, 2, -1, 2**31, 2**63, 2**64, -(2**63) - 1, 10**30, 0.5, -0.0, 1e308,
    -1e-300, "", "x", "٣", "１", " 1 ", "+1", "a" * 300, [], [1], ["a"], [[]], {}, {"a": 1},
    {"1": 1}, {"٣": 1}, {"1": 1e308}, [None],
]  # fmt: skip
SHARED = {
    "model": ["SmolLM2-135M-Instruct", "gpt-4", "m" * 10_000],
    "temperature": [0, 0.7, 2.0, 1e-9], "top_p": [0.1, 1.0, 1e-30], "n": [1, 2, 129],
    "presence_penalty": [-2, 2, 2.0001], "frequency_penalty": [-2, 1.5],
    "logit_bias": [{"0": 100}, {"49151": -100}, {str(i): 1 for i in range(MAX_LOGIT_BIAS)},
                   {str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}, {"49152": 1}],
    "seed": [0, 2**64 - 1, -(2**63), 2**64], "stop": ["\n", [".", "!"], ["a"] * MAX_STOP,
                                                  ["b"] * (MAX_STOP + 1), ["x" * MAX_STOP_CHARS]],
    "stream": [True], "stream_options": [{"include_usage": True}, {"include_usage": 1}],
    "user": ["u"], "top_k": [1, 49152, 2**31 - 1, 2**31], "min_p": [0.0, 0.5, 1.0],
    "repetition_penalty": [1e-9, 1.2, 100.0], "min_tokens": [0, 1, 2, 3],
    "stop_token_ids": [[0], list(range(MAX_STOP_TOKEN_IDS)), list(range(MAX_STOP_TOKEN_IDS + 1))],
    "ignore_eos": [True], "include_stop_str_in_output": [True], "skip_special_tokens": [False],
}  # fmt: skip
COMPLETION_FIELDS = {
    **SHARED,
    "prompt": ["Hi", ["Hi", "Yo"], [1, 2, 3], [[1, 2], [3]], [49152], "a" * 200_000, ["Hi"] * 1025],
    "max_tokens": [1, 2, 3, 0, 2049], "echo": [True], "logprobs": [0, 5, 20, 21],
    "best_of": [1, 2], "suffix": ["!"], "prompt_logprobs": [0, 3, 21],
}  # fmt: skip
CHAT_FIELDS = {
    **SHARED,
    "messages": [USER, [], [{"role": "user"}], [{"role": "x", "content": "y"}],
                 [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                 [{"role": "user", "content": [{"type": "image_url"}]}],
                 [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]],
    "max_tokens": [1, 2, 3, 0, 4000], "max_completion_tokens": [1, 3, 0],
    "logprobs": [True, False], "top_logprobs": [0, 3, 20, 21], "add_generation_prompt": [False],
}  # fmt: skip
# Fields that would make a valid request generate many tokens: never given a large valid value.
_BUDGET_FIELDS = ("max_tokens", "max_completion_tokens")


def _fuzz_body(rng: random.Random) -> tuple[str, dict]:
    endpoint, fields = rng.choice([(COMPLETIONS, COMPLETION_FIELDS), (CHAT, CHAT_FIELDS)])
    base = {"prompt": "Hi"} if endpoint == COMPLETIONS else {"messages": USER}
    body = {**base, "max_tokens": 2}
    for name in rng.sample(sorted(fields), rng.randint(1, 4)):
        value = rng.choice(fields[name] if rng.random() < 0.6 else HOSTILE)
        if name in _BUDGET_FIELDS and (
            value is None or (isinstance(value, int) and 3 < value < 2049)
        ):
            value = 3
        body[name] = value
    return endpoint, body


@contextmanager
def health_watch(url: str) -> Iterator[list[tuple[int, float]]]:
    """Polls /health every 0.1 s in a thread; yields the (status, seconds) list it fills."""
    results: list[tuple[int, float]] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                start = time.monotonic()
                status = client.get(f"{url}/health").status_code
                results.append((status, time.monotonic() - start))
                stop.wait(0.1)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        yield results
    finally:
        stop.set()
        thread.join()


def _send(http: httpx.Client, endpoint: str, body: dict) -> tuple[int, str]:
    """(status, text); a stream's SSE error event counts as its status."""
    if not body.get("stream"):
        response = http.post(endpoint, json=body)
        return response.status_code, response.text[:300]
    with http.stream("POST", endpoint, json=body) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, response.text[:300]
        for line in response.iter_lines():
            if line.startswith('data: {"error"'):
                return 500, line[:300]
    return 200, ""


def test_fuzz_both_endpoints(server: ServerProcess, http: httpx.Client) -> None:
    greedy_text = http.post(COMPLETIONS, json=GREEDY).json()["choices"][0]["text"]
    rng = random.Random(16)
    requests = [_fuzz_body(rng) for _ in range(NUM_FUZZ_REQUESTS)]
    with health_watch(server.url) as health, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda request: _send(http, *request), requests))
    failures = [(r, s) for r, s in zip(requests, results, strict=True) if s[0] >= 500]
    assert not failures, failures[:3]
    statuses = [status for status, _ in results]
    assert statuses.count(200) >= 30 and statuses.count(400) >= 100  # both kinds were exercised
    assert health and all(status == 200 for status, _ in health)
    assert server.wait_for_metric("kaon:kv_cache_usage_perc", 0.0) == 0.0
    assert server.wait_for_metric("kaon:num_requests_running", 0.0) == 0.0
    assert http.post(COMPLETIONS, json=GREEDY).json()["choices"][0]["text"] == greedy_text


STREAM = {"prompt": "Once upon a time", "max_tokens": 48, "ignore_eos": True, "temperature": 0,
          "stream": True}  # fmt: skip


def _time_per_token(http: httpx.Client) -> float:
    """Mean seconds between a stream's tokens (first token excluded)."""
    arrivals = []
    with http.stream("POST", COMPLETIONS, json=STREAM) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                arrivals.append(time.monotonic())
    assert len(arrivals) >= 40
    return (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)


def _alongside(background: Callable[[threading.Event], None], http: httpx.Client) -> float:
    stop = threading.Event()
    thread = threading.Thread(target=background, args=(stop,))
    thread.start()
    try:
        time.sleep(0.3)  # the background load is under way
        return _time_per_token(http)
    finally:
        stop.set()
        thread.join()


def test_heavy_requests_do_not_stall_others(server: ServerProcess, http: httpx.Client) -> None:
    huge = b'{"prompt": "' + b"a" * (16 * 2**20) + b'"}'
    largest = {
        "prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True,
        "stop": [f"{i}" * MAX_STOP_CHARS for i in range(MAX_STOP)],
        "stop_token_ids": list(range(1000, 1000 + MAX_STOP_TOKEN_IDS)),
        "logit_bias": {str(i): 0.5 for i in range(5000, 5000 + MAX_LOGIT_BIAS)},
    }  # fmt: skip
    rejected: list[int] = []

    def post_huge(stop: threading.Event) -> None:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
            while not stop.is_set():
                headers = {"Content-Type": "application/json"}
                rejected.append(client.post(COMPLETIONS, content=huge, headers=headers).status_code)
                stop.wait(0.25)  # one 16 MB upload after another, not a flood of them

    def run_largest(stop: threading.Event) -> None:
        while not stop.is_set():
            with http.stream("POST", COMPLETIONS, json={**largest, "stream": True}) as response:
                for _ in response.iter_lines():
                    if stop.is_set():
                        break

    _time_per_token(http)  # warm up
    alone = _time_per_token(http)
    with health_watch(server.url) as health:
        while_huge = _alongside(post_huge, http)
        while_largest = _alongside(run_largest, http)
    alone = (alone + _time_per_token(http)) / 2  # the machine is shared: before and after
    assert rejected and set(rejected) == {413}
    assert health and all(status == 200 and seconds < 1.0 for status, seconds in health), health
    assert while_huge < 2 * alone, (while_huge, alone)
    assert while_largest < 2 * alone, (while_largest, alone)
    assert server.wait_for_metric("kaon:kv_cache_usage_perc", 0.0) == 0.0
