"""A client that disconnects (streaming or not) gets its request aborted, and the KV cache
blocks go back to the pool: kaon:kv_cache_usage_perc returns to 0."""

from __future__ import annotations

import httpx
import pytest

from tests.entrypoints.utils import ServerProcess

ABORTED = 'kaon:request_success_total{finished_reason="abort"}'
# Long enough that the request is still generating when the client leaves.
LONG = {"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True, "temperature": 0}


def _num_aborted(server: ServerProcess) -> float:
    return server.metrics().get(ABORTED, 0.0)


def test_disconnect_mid_stream_aborts_and_frees_kv(server: ServerProcess) -> None:
    before = _num_aborted(server)
    with (
        httpx.Client(headers=server.headers, timeout=60) as http,
        http.stream("POST", f"{server.url}/v1/completions", json={**LONG, "stream": True}) as resp,
    ):
        assert resp.status_code == 200
        lines = resp.iter_lines()
        received = [line for _, line in zip(range(6), lines, strict=False) if line]
        assert len(received) >= 3  # generating: a few chunks arrived
        assert server.metrics()["kaon:kv_cache_usage_perc"] > 0
    # Leaving the block closed the connection mid-stream.
    assert server.wait_for_metric(ABORTED, before + 1) == before + 1
    assert server.wait_for_metric("kaon:kv_cache_usage_perc", 0.0) == 0.0
    assert server.wait_for_metric("kaon:num_requests_running", 0.0) == 0.0


def test_disconnect_while_waiting_for_a_full_response(server: ServerProcess) -> None:
    before = _num_aborted(server)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1.5 s
        httpx.post(f"{server.url}/v1/completions", json=LONG, headers=server.headers, timeout=1.5)
    assert server.wait_for_metric(ABORTED, before + 1) == before + 1
    assert server.wait_for_metric("kaon:kv_cache_usage_perc", 0.0) == 0.0
    assert server.wait_for_metric("kaon:num_requests_running", 0.0) == 0.0
