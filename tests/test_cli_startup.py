"""`kaon --help` and argument errors answer before torch or the engine is imported.

Each case runs ``python -X importtime`` in a subprocess and reads the imported module names from
its report: ``torch`` must not be among them. Optional packages are checked before any work:
``--compare-hf`` without transformers fails at once, naming the extra that installs it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs kaon's entry point; the argv after "-c CODE" holds packages to hide, then kaon's arguments.
CODE = r"""
import sys
hidden, argv = sys.argv[1].split(","), sys.argv[2:]
for name in filter(None, hidden):
    sys.modules[name] = None  # as if not installed
from kaon.cli import main
sys.exit(main(argv))
"""


def run_cli(*argv: str, hide: str = "") -> tuple[subprocess.CompletedProcess, set[str]]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", CODE, hide, *argv],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return result, imported


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if not line.startswith("import time:")]


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["bench", "latency", "--help"]])
def test_help_does_not_import_torch(argv):
    result, imported = run_cli(*argv)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: kaon")
    assert "kaon.cli" in imported and "torch" not in imported


def test_argument_errors_do_not_import_torch():
    result, imported = run_cli("generate", "hi", "--no-such-flag")
    assert result.returncode == 2
    assert _error_lines(result)[-1] == "kaon: error: unrecognized arguments: --no-such-flag"
    assert "torch" not in imported

    result, imported = run_cli("generate", "hi", "--max-num-seqs", "0")
    assert result.returncode == 2
    assert _error_lines(result) == ["kaon: error: max_num_seqs must be a positive integer, got 0"]
    assert "torch" not in imported

    result, imported = run_cli("generate", "hi", "--max-tokens", "0")
    assert result.returncode == 2
    assert _error_lines(result) == ["kaon: error: max_tokens must be >= 1, got 0"]
    assert "torch" not in imported

    result, imported = run_cli("serve", "--model", "/nonexistent.gguf")
    assert result.returncode == 2
    assert _error_lines(result) == ["kaon: error: model path /nonexistent.gguf does not exist"]
    assert "torch" not in imported


@pytest.mark.parametrize("command", ["latency", "throughput"])
def test_compare_hf_without_transformers_fails_before_any_work(command):
    result, imported = run_cli("bench", command, "--compare-hf", hide="transformers")
    assert result.returncode == 2
    assert _error_lines(result) == [
        "kaon: error: --compare-hf needs the optional package 'transformers', which is not "
        "installed: pip install -e '.[hf]' in a kaon checkout (or: pip install transformers)"
    ]
    assert "torch" not in imported
