"""Helpers for the server tests: start a ``kaon serve`` process, read its /metrics, and compute
the offline greedy reference with ``kaon.LLM``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

API_KEY = "kaon-test-key"
MODEL_NAME = "SmolLM2-135M-Instruct"
# Engine limits shared by the server and the offline LLM, so greedy results can be compared.
# --quantization none: the servers' exact greedy strings were recorded on float32 weights.
ENGINE_FLAGS = ["--kv-cache-memory-bytes", "300000000", "--max-model-len", "2048",
                "--quantization", "none"]  # fmt: skip
ENGINE_OPTIONS = {"kv_cache_memory_bytes": 300_000_000, "max_model_len": 2048,
                  "quantization": "none"}  # fmt: skip
SERVE_COMMAND = [sys.executable, "-m", "kaon", "serve"]


@dataclass
class ServerProcess:
    """A running ``kaon serve``: its base URL, API key, process and log file."""

    url: str
    api_key: str | None
    process: subprocess.Popen
    log_path: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log_tail(self, num_chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-num_chars:]

    def metrics(self) -> dict[str, float]:
        """GET /metrics as {'name{labels}': value} (labels as printed, model_name dropped)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        values = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            key, value = line.rsplit(" ", 1)
            key = re.sub(r',?model_name="[^"]*"', "", key).replace("{,", "{").replace("{}", "")
            values[key] = float(value)
        return values

    def wait_for_metric(self, key: str, expected: float, timeout: float = 20.0) -> float:
        """Poll /metrics until ``key`` equals ``expected``; returns the last value seen."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.metrics().get(key)
            if value == expected:
                return value
            time.sleep(0.1)
        return value  # type: ignore[return-value]

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for a clean exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(log_path: Path, extra_flags: list[str], api_key: str | None) -> ServerProcess:
    """Start ``kaon serve`` on a free loopback port and wait until /health answers 200."""
    port = free_port()
    command = [*SERVE_COMMAND, *ENGINE_FLAGS, "--port", str(port), *extra_flags]
    if api_key:
        command += ["--api-key", api_key]
    log = open(log_path, "wb")  # noqa: SIM115 - the server writes to it until it exits
    env = {**os.environ, "KAON_LOG_LEVEL": "INFO"}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(f"http://127.0.0.1:{port}", api_key, process, log_path)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kaon serve exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"kaon serve did not become healthy:\n{server.log_tail()}")


def offline_greedy(llm, prompts: list, max_tokens: int | list[int], **params) -> list:
    """CompletionOutputs of greedy decoding, one per prompt (str or token ids)."""
    from kaon import SamplingParams

    budgets = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
    sampling = [SamplingParams(temperature=0, max_tokens=m, **params) for m in budgets]
    return [output.outputs[0] for output in llm.generate(prompts, sampling, use_tqdm=False)]


def offline_chat(llm, messages: list[dict], max_tokens: int, **params):
    """The CompletionOutput of greedy ``LLM.chat``."""
    from kaon import SamplingParams

    sampling = SamplingParams(temperature=0, max_tokens=max_tokens, **params)
    return llm.chat(messages, sampling, use_tqdm=False)[0].outputs[0]
