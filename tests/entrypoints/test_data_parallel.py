"""``kaon serve --data-parallel-size 2``: two real replica processes behind one front.

32 concurrent greedy requests equal the offline ``LLM`` (both replicas used); prefix affinity
keeps a shared prefix on one replica; the front validates like a single server; a replica
killed with SIGKILL under load fails only its own requests (502 / SSE error), the live replica
keeps serving, the replica is restarted and serves again; SIGTERM leaves no replica behind.
Every wait has a timeout, so a hang fails the test instead of blocking it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.entrypoints.utils import (
    API_KEY,
    MODEL_NAME,
    SERVE_COMMAND,
    ServerProcess,
    free_port,
    offline_chat,
    offline_greedy,
    start_server,
)

REPLICA_HEADER = "x-kaon-replica"
DP_FLAGS = ["--data-parallel-size", "2", "--kv-cache-memory", "200M", "--max-num-seqs", "32",
            "--no-access-log"]  # fmt: skip
TIMEOUT_S = 300  # upper bound for any one wait; a hang fails instead of blocking the suite


@pytest.fixture(scope="module")
def dp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log_path = tmp_path_factory.mktemp("dp-server") / "kaon-serve.log"
    server = start_server(log_path, DP_FLAGS, API_KEY)
    pids = replica_pids(server)
    yield server
    server.stop()
    assert all(process_gone(pid) for pid in pids + replica_pids_seen), server.log_tail()


replica_pids_seen: list[int] = []  # every replica pid the tests saw (restarts add more)


def replicas(server: ServerProcess) -> list[dict]:
    response = httpx.get(f"{server.url}/replicas", timeout=10)
    response.raise_for_status()
    data = response.json()["data"]
    replica_pids_seen.extend(r["pid"] for r in data if r["pid"] not in replica_pids_seen)
    return data


def replica_pids(server: ServerProcess) -> list[int]:
    return [r["pid"] for r in replicas(server)]


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie waiting for init)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def async_client(server: ServerProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=TIMEOUT_S
    )


async def complete(
    client: openai.AsyncOpenAI,
    prompt: str,
    stream: bool,
    streaming_on: list[int] | None = None,
    **params,
):
    """(replica index, text) of one greedy completion through the front. Errors propagate;
    a stream's replica comes from its response headers, read before the first event, and is
    appended to ``streaming_on`` once its first event arrived."""
    raw = await client.completions.with_raw_response.create(
        model=MODEL_NAME, prompt=prompt, temperature=0, stream=stream, **params
    )
    replica = int(raw.headers[REPLICA_HEADER])
    result = raw.parse()  # the legacy raw response parses synchronously
    if not stream:
        return replica, result.choices[0].text
    text = ""
    async for chunk in result:
        if not text and streaming_on is not None:
            streaming_on.append(replica)
        text += chunk.choices[0].text if chunk.choices else ""
    return replica, text


def test_32_concurrent_greedy_requests_equal_offline(dp_server: ServerProcess, llm) -> None:
    prompts = [f"Request {i}: name a color and a number." for i in range(32)]
    expected = [o.text for o in offline_greedy(llm, prompts, 16)]

    async def run() -> list[tuple[int, str]]:
        async with async_client(dp_server) as client:
            jobs = [complete(client, p, i % 2 == 1, max_tokens=16) for i, p in enumerate(prompts)]
            return await asyncio.wait_for(asyncio.gather(*jobs), TIMEOUT_S)

    results = asyncio.run(run())
    assert [text for _, text in results] == expected
    served = [replica for replica, _ in results]
    # Least outstanding tokens splits 32 equal-sized concurrent requests about evenly.
    assert served.count(0) >= 8 and served.count(1) >= 8, served
    assert all(r["outstanding_requests"] == 0 for r in replicas(dp_server))


def test_shared_prefix_goes_to_one_replica(dp_server: ServerProcess) -> None:
    passage = "The lighthouse keeper wrote in his log every evening. " * 6  # > 3 KV blocks
    metrics_before = dp_server.metrics()
    client = openai.OpenAI(base_url=f"{dp_server.url}/v1", api_key=API_KEY, timeout=TIMEOUT_S)
    served = []
    for question in ("Who wrote?", "When?", "Where?"):
        raw = client.completions.with_raw_response.create(
            model=MODEL_NAME, prompt=passage + question, max_tokens=2, temperature=0
        )
        served.append(raw.headers[REPLICA_HEADER])
    assert len(set(served)) == 1, served
    metrics = dp_server.metrics()
    key = f'kaon:dp_requests_routed_total{{reason="affinity",replica="{served[0]}"}}'
    assert metrics[key] - metrics_before.get(key, 0.0) == 2.0  # the 2nd and 3rd followed the 1st
    # The replica's own prefix cache hit it (its metrics come through the front, labelled).
    assert metrics[f'kaon:prefix_cache_hit_rate{{replica="{served[0]}"}}'] > 0.0


def test_front_endpoints_and_errors(dp_server: ServerProcess, llm) -> None:
    client = openai.OpenAI(base_url=f"{dp_server.url}/v1", api_key=API_KEY, max_retries=0)
    messages = [{"role": "user", "content": "Say hi."}]
    chat = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0
    )
    assert chat.choices[0].message.content == offline_chat(llm, messages, 8).text
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    tokens = httpx.post(f"{dp_server.url}/tokenize", json={"prompt": "Hello world"},
                        headers=headers, timeout=30).json()  # fmt: skip
    assert tokens["tokens"] == llm.engine.tokenizer.encode("Hello world")
    assert httpx.get(f"{dp_server.url}/version", timeout=30).json()["version"]
    # Bad input: the same 400 envelopes as a single server, through the front.
    with pytest.raises(openai.BadRequestError) as bad_temperature:
        client.completions.create(model=MODEL_NAME, prompt="x", temperature=-1)
    assert bad_temperature.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as bad_role:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "x", "content": "y"}])
    assert bad_role.value.body["param"].startswith("messages[0]")
    url = f"{dp_server.url}/v1/completions"
    json_headers = {**headers, "Content-Type": "application/json"}
    not_json = httpx.post(url, content=b"{", headers=json_headers, timeout=30)
    assert (not_json.status_code, not_json.json()["error"]["param"]) == (400, "body")
    unknown = httpx.post(url, json={"prompt": "x", "best_of": 2}, headers=headers, timeout=30)
    assert (unknown.status_code, unknown.json()["error"]["param"]) == (400, "best_of")
    assert httpx.post(url, json={"prompt": "x"}, timeout=30).status_code == 401
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)


def test_front_responses_api_and_request_id(dp_server: ServerProcess, llm) -> None:
    client = openai.OpenAI(base_url=f"{dp_server.url}/v1", api_key=API_KEY, max_retries=0)
    response = client.responses.create(
        model=MODEL_NAME, input="Say hi.", max_output_tokens=8, temperature=0
    )
    assert (
        response.output_text == offline_chat(llm, [{"role": "user", "content": "Say hi."}], 8).text
    )
    assert response._request_id.startswith("req_")
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL_NAME, input="x", previous_response_id="resp_1")
    assert refused.value.body["param"] == "previous_response_id"
    headers = {"Authorization": f"Bearer {API_KEY}", "x-request-id": "dp-7"}
    bodies = {"/v1/completions": {"prompt": "Hi", "max_tokens": 1}, "/tokenize": {"prompt": "Hi"}}
    for path, body in bodies.items():
        answer = httpx.post(f"{dp_server.url}{path}", json=body, headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"] == "dp-7", path


def test_killed_replica_fails_only_its_requests_and_restarts(dp_server: ServerProcess, llm) -> None:
    prompts = [f"Story {i}: once upon a time" for i in range(16)]
    params = {"max_tokens": 48, "extra_body": {"ignore_eos": True}}
    expected = [o.text for o in offline_greedy(llm, prompts, 48, ignore_eos=True)]
    old = replicas(dp_server)
    # Equal-sized requests alternate between the replicas in arrival order, so an even/odd
    # stream pattern could put every stream on one replica; pairs (2 streams, 2 plain) mix them.
    streams = [i % 4 < 2 for i in range(len(prompts))]
    streaming_on: list[int] = []  # replicas of the streams that got their first event
    chosen: list[int] = []

    async def run_and_kill() -> list:
        async with async_client(dp_server) as client:
            jobs = [
                asyncio.create_task(complete(client, p, streams[i], streaming_on, **params))
                for i, p in enumerate(prompts)
            ]
            # Kill a replica that holds requests and has a started stream, so both failure
            # paths run: the 502 envelope and the SSE error event mid-stream.
            deadline = time.monotonic() + TIMEOUT_S
            while time.monotonic() < deadline and not streaming_on:
                await asyncio.sleep(0.05)
            assert streaming_on, "no stream started"
            chosen.append(streaming_on[0])
            state = await asyncio.to_thread(replicas, dp_server)
            assert state[chosen[0]]["outstanding_requests"] >= 4, state
            os.kill(old[chosen[0]]["pid"], signal.SIGKILL)
            done, pending = await asyncio.wait(jobs, timeout=TIMEOUT_S)
            assert not pending, "requests hung after a replica was killed"
            return [job.exception() or job.result() for job in jobs]

    results = asyncio.run(run_and_kill())
    victim = chosen[0]
    live = 1 - victim
    num_failed = {"envelope": 0, "sse": 0}
    for index, result in enumerate(results):
        if isinstance(result, tuple):  # completed: on the live replica, or before the kill
            assert result[1] == expected[index], f"request {index}"
            continue
        assert isinstance(result, openai.APIError), repr(result)
        assert f"replica {victim}" in result.message and "failed" in result.message, result.message
        assert result.body["code"] == "replica_failed"
        if isinstance(result, openai.APIStatusError):  # failed before its response started
            assert result.status_code == 502
            assert result.response.headers[REPLICA_HEADER] == str(victim)
            num_failed["envelope"] += 1
        else:  # a stream that had started: the SSE error event
            num_failed["sse"] += 1
    assert num_failed["sse"] >= 1 and sum(num_failed.values()) >= 4, num_failed
    # New requests go to the live replica while the victim restarts.
    client = openai.OpenAI(base_url=f"{dp_server.url}/v1", api_key=API_KEY, max_retries=0,
                           timeout=TIMEOUT_S)  # fmt: skip
    raw = client.completions.with_raw_response.create(
        model=MODEL_NAME, prompt=prompts[0], temperature=0, **params
    )
    assert (raw.headers[REPLICA_HEADER], raw.parse().choices[0].text) == (str(live), expected[0])
    # The supervisor restarts it; it rejoins once its /health passes.
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        state = replicas(dp_server)[victim]
        if state["up"]:
            break
        time.sleep(0.5)
    assert state["up"] and state["restarts"] == 1 and state["pid"] != old[victim]["pid"], state
    assert process_gone(old[victim]["pid"])
    metrics = dp_server.metrics()
    assert metrics[f'kaon:dp_replica_up{{replica="{victim}"}}'] == 1.0
    assert metrics[f'kaon:dp_replica_restarts_total{{replica="{victim}"}}'] == 1.0
    assert_restarted_replica_serves(dp_server, victim, prompts[1], expected[1], params)


def assert_restarted_replica_serves(
    server: ServerProcess, victim: int, prompt: str, expected: str, params: dict
) -> None:
    """Send one request that lands on the restarted ``victim`` replica and check its text.

    With both replicas idle, the tie goes to the lower index; when that is the live replica, a
    stream held open on it makes the victim the least loaded one."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0,
                           timeout=TIMEOUT_S)  # fmt: skip
    stream = None
    if victim == 1:
        held = client.completions.with_raw_response.create(
            model=MODEL_NAME, prompt="Hold on", max_tokens=200, stream=True, temperature=0
        )
        assert held.headers[REPLICA_HEADER] == "0"
        stream = held.parse()
        next(iter(stream))
    try:
        raw = client.completions.with_raw_response.create(
            model=MODEL_NAME, prompt=prompt, temperature=0, **params
        )
        assert (raw.headers[REPLICA_HEADER], raw.parse().choices[0].text) == (str(victim), expected)
    finally:
        if stream is not None:
            stream.close()


# Stops the server, so it stays the last test of this module.
def test_sigterm_stops_every_replica(dp_server: ServerProcess) -> None:
    pids = replica_pids(dp_server)
    assert dp_server.stop() == 0, dp_server.log_tail()
    deadline = time.monotonic() + 30
    while not all(process_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(process_gone(pid) for pid in pids), pids


def test_replicas_die_with_a_killed_front(tmp_path: Path) -> None:
    """SIGKILL gives the front no chance to stop its replicas: the kernel does it
    (PR_SET_PDEATHSIG), here while they are still loading the model."""
    command = [*SERVE_COMMAND, "--port", str(free_port()), *DP_FLAGS]
    with open(tmp_path / "front.log", "wb") as log:
        front = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        children: list[int] = []
        deadline = time.monotonic() + TIMEOUT_S
        while len(children) < 2 and time.monotonic() < deadline and front.poll() is None:
            children_file = Path(f"/proc/{front.pid}/task/{front.pid}/children")
            children = [int(pid) for pid in children_file.read_text().split()]
            time.sleep(0.1)
        assert len(children) == 2, (tmp_path / "front.log").read_text()[-2000:]
    finally:
        front.kill()
        front.wait(timeout=30)
    deadline = time.monotonic() + 30
    while not all(process_gone(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(process_gone(pid) for pid in children), children
