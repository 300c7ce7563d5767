"""A real engine death (tensor-parallel rank 1 killed mid-generation): the running stream ends
with an SSE error event and ``data: [DONE]``, every endpoint and /health answer 503 with a code,
and ``kaon serve`` exits with status 1 so that a supervisor restarts it. The server serves the
2-layer SmolLM2 cut (tiny_model_dir) so that it loads fast."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.entrypoints.utils import ServerProcess, start_server


def _child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc: the tensor-parallel worker ranks)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


@pytest.fixture
def tp_server(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KAON_TP_TIMEOUT", "30")
    flags = ["--model", str(tiny_model_dir), "--tensor-parallel-size", "2"]
    server = start_server(tmp_path / "kaon-serve.log", flags, None)
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait()


def test_engine_death_is_503_then_exit_1(tp_server: ServerProcess) -> None:
    (worker,) = _child_pids(tp_server.process.pid)
    body = {"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    url = tp_server.url
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        assert next(lines).startswith('data: {"id"')  # generating
        os.kill(worker, signal.SIGKILL)
        events = [line for line in lines if line]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "engine_unavailable")
    for method, path in (("GET", "/health"), ("GET", "/v1/models"), ("POST", "/tokenize")):
        answer = httpx.request(method, url + path, json={"prompt": "Hi"}, timeout=10)
        assert answer.status_code == 503, (path, answer.text)
        assert answer.json()["error"]["code"] == "engine_unavailable"
    deadline = time.monotonic() + 60
    while tp_server.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tp_server.process.returncode == 1, tp_server.log_tail()
    assert "server stopped after an engine error" in tp_server.log_tail()
