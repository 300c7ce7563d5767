"""A second, tiny server (1 running + 1 waiting request at most): a full queue answers 429 with
Retry-After; a queued request whose client leaves is dropped; SIGTERM lets the in-flight
request finish, refuses new connections, and exits 0."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.entrypoints.utils import ServerProcess, start_server

LONG = {"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True, "stream": True}


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log_path = tmp_path_factory.mktemp("small-server") / "kaon-serve.log"
    flags = ["--max-num-seqs", "1", "--max-waiting-requests", "1", "--shutdown-timeout", "60",
             "--served-model-name", "kaon-small", "small-alias"]  # fmt: skip
    server = start_server(log_path, flags, api_key=None)
    yield server
    server.stop()


def test_full_queue_is_429_and_queued_disconnect_is_dropped(small_server: ServerProcess) -> None:
    url = f"{small_server.url}/v1/completions"
    with (
        httpx.Client(timeout=60) as running_client,
        httpx.Client(timeout=60) as queued_client,
        running_client.stream("POST", url, json=LONG) as running,
    ):
        # Keep the line iterator alive: dropping it would close the connection.
        running_lines = running.iter_lines()
        assert next(running_lines).startswith("data: ")  # generating now
        with queued_client.stream("POST", url, json=LONG) as queued:
            assert queued.status_code == 200  # accepted, waiting for the running slot
            assert small_server.wait_for_metric("kaon:num_requests_waiting", 1.0) == 1.0
            rejected = httpx.post(url, json={"prompt": "hi", "max_tokens": 1})
            assert rejected.status_code == 429
            assert rejected.headers["Retry-After"] == "1"
            error = rejected.json()["error"]
            assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        # The queued client left before its request ever ran.
        assert small_server.wait_for_metric("kaon:num_requests_waiting", 0.0) == 0.0
        assert small_server.metrics()["kaon:num_requests_running"] == 1.0
    assert small_server.wait_for_metric("kaon:kv_cache_usage_perc", 0.0) == 0.0
    body = {"model": "small-alias", "prompt": "hi", "max_tokens": 2, "temperature": 0}
    after = httpx.post(url, json=body, timeout=60).json()
    assert after["usage"]["completion_tokens"] == 2
    assert after["model"] == "kaon-small"  # the first --served-model-name is reported


def test_served_model_names(small_server: ServerProcess) -> None:
    models = httpx.get(f"{small_server.url}/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["kaon-small", "small-alias"]
    unknown = httpx.post(
        f"{small_server.url}/v1/completions", json={"model": "SmolLM2-135M-Instruct", "prompt": "x"}
    )
    assert unknown.status_code == 404


# Stops the server, so it stays the last test of this module.
def test_sigterm_finishes_in_flight_requests_then_exits(small_server: ServerProcess) -> None:
    url = f"{small_server.url}/v1/completions"
    body = {"prompt": "Once upon a time", "max_tokens": 40, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    lines: list[str] = []
    started = threading.Event()

    def read_stream() -> None:
        with httpx.stream("POST", url, json=body, timeout=120) as response:
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                    started.set()

    reader = threading.Thread(target=read_stream)
    reader.start()
    assert started.wait(60)
    small_server.process.send_signal(15)  # SIGTERM while the request is generating
    time.sleep(1.0)
    with pytest.raises(httpx.ConnectError):  # no new connections once shutting down
        httpx.get(f"{small_server.url}/health", timeout=5)
    reader.join(120)
    assert small_server.process.wait(timeout=60) == 0
    assert lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2].removeprefix("data: "))["usage"]
    assert usage["completion_tokens"] == 40  # the in-flight request ran to its end
    finishes = [json.loads(line[6:])["choices"] for line in lines[:-1]]
    assert [c[0]["finish_reason"] for c in finishes if c][-1] == "length"
