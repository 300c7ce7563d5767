"""``kaon bench serve`` against a real ``kaon serve`` subprocess on loopback: two concurrency
levels with the --verify oracle, a Poisson chat run, and an unreachable server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaon.cli import main
from tests.entrypoints.utils import API_KEY, ServerProcess, free_port, start_server

OUTPUT_LEN = 6


@pytest.fixture(scope="module")
def kaon_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log_path = tmp_path_factory.mktemp("bench-serve") / "kaon-serve.log"
    server = start_server(log_path, ["--max-num-seqs", "8", "--no-access-log"], API_KEY)
    yield server
    assert server.stop() == 0, server.log_tail()


def _run(server: ServerProcess, path: Path, *flags: str) -> int:
    argv = ["bench", "serve", "--base-url", server.url, "--api-key", API_KEY]
    argv += ["--input-len", "12", "--output-len", str(OUTPUT_LEN), "--output-json", str(path)]
    return main([*argv, *flags])


def test_concurrency_levels_with_verify(kaon_server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "serve.json"
    flags = ["--concurrency", "1,4", "--num-prompts", "4", "--verify", "--slo-ttft", "1000"]
    flags += ["--server-pid", str(kaon_server.process.pid)]
    assert _run(kaon_server, path, *flags) == 0
    result = json.loads(path.read_text())
    assert result["settings"]["model"] == "SmolLM2-135M-Instruct"
    assert result["load_kind"] == "concurrency"
    assert [level["load"] for level in result["levels"]] == [1, 4]
    reference = result["verify_reference"]["requests"]
    assert len(reference) == 8 and all(r["success"] for r in reference)
    for level in result["levels"]:
        figures, requests = level["figures"], level["requests"]
        assert level["verify"] == {"num_checked": 4, "num_mismatches": 0, "mismatches": []}
        assert (figures["num_completed"], figures["num_failed"]) == (4, 0)
        # ignore_eos: every request returns exactly max_tokens, counted from the server's usage.
        assert figures["output_tokens_source"] == "usage"
        assert [r["output_tokens"] for r in requests] == [OUTPUT_LEN] * 4
        duration = figures["duration_s"]
        assert figures["output_tokens_per_s"] == pytest.approx(4 * OUTPUT_LEN / duration)
        assert figures["goodput_requests_per_s"] == pytest.approx(4 / duration)  # SLO 1000 s
        for r in requests:
            assert 0 < r["ttft"] <= r["e2e"] and r["prompt_tokens"] > 0
            assert r["tpot"] == pytest.approx((r["e2e"] - r["ttft"]) / (OUTPUT_LEN - 1))
            assert len(r["itl"]) == len(r["chunk_times"]) - 1
        assert figures["ttft_s"]["p50"] <= figures["ttft_s"]["p99"]
        memory = level["server_memory"]
        assert 100 < memory["peak_rss_mib"] <= memory["vm_hwm_mib"] + 1
    # Several levels: a PNG next to the JSON.
    assert Path(result["plot"]) == path.with_suffix(".png")
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_poisson_rate_chat(kaon_server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "rate.json"
    flags = ["--request-rate", "50", "--num-prompts", "3", "--endpoint", "chat", "--seed", "3"]
    assert _run(kaon_server, path, *flags, "--plot", str(tmp_path / "unused.png")) == 0
    result = json.loads(path.read_text())
    (level,) = result["levels"]
    assert result["load_kind"] == "request_rate" and level["load"] == 50
    assert level["figures"]["num_completed"] == 3
    assert level["figures"]["goodput_requests_per_s"] is None  # no SLO given
    assert "plot" not in result and not (tmp_path / "unused.png").exists()  # one level only


def test_unreachable_server_counts_failures(tmp_path: Path) -> None:
    path = tmp_path / "down.json"
    argv = ["bench", "serve", "--base-url", f"http://127.0.0.1:{free_port()}", "--model", "m"]
    argv += ["--num-prompts", "2", "--num-warmup", "0", "--output-json", str(path)]
    assert main(argv) == 1
    figures = json.loads(path.read_text())["levels"][0]["figures"]
    assert (figures["num_failed"], figures["num_completed"]) == (2, 0)
    assert figures["ttft_s"] is None and figures["output_tokens_per_s"] == 0


def test_bad_options_are_errors() -> None:
    assert main(["bench", "serve", "--base-url", "http://x", "--verify", "--temperature", "1"]) == 2
    with pytest.raises(SystemExit):
        main(["bench", "serve", "--base-url", "http://x", "--concurrency", "0"])
