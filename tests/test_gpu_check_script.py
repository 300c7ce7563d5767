"""scripts/gpu_check.sh --dry-run: the prepared GPU run validates its inputs and runs every phase
on a toy shape on CPU (kaon vs transformers logits, batched == alone, throughput, decode).

The carried wheel is replaced by a stand-in with the same name, tags and top-level module (the
real one is downloaded from PyPI by ``--prepare``, which tests must not do); the tokenizer is the
default model's, written from its GGUF.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
WHEEL = "llguidance-1.9.1-cp39-abi3-manylinux_2_31_x86_64.whl"


def _run(check_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KAON_GPU_CHECK_DIR": str(check_dir), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_dry_run_names_missing_inputs(tmp_path):
    result = _run(tmp_path, "--dry-run", "--no-prepare")
    assert result.returncode == 2
    assert "want exactly one llguidance-1.9.1 wheel, found 0" in result.stderr
    assert "tokenizer.json is missing" in result.stderr


def test_dry_run_rejects_a_wheel_for_another_platform(tmp_path):
    (tmp_path / "wheels").mkdir()
    with zipfile.ZipFile(tmp_path / "wheels" / "llguidance-1.9.1-cp312-cp312-win_amd64.whl", "w"):
        pass
    result = _run(tmp_path, "--dry-run", "--no-prepare")
    assert result.returncode == 2
    assert "not built for x86-64 Linux" in result.stderr
    assert "holds no top-level module 'llguidance'" in result.stderr


def test_dry_run_runs_every_phase_on_cpu(tmp_path):
    pytest.importorskip("transformers")
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from gpu_check_inputs import write_tokenizer
    finally:
        sys.path.pop(0)
    write_tokenizer(tmp_path / "tokenizer")
    (tmp_path / "wheels").mkdir()
    with zipfile.ZipFile(tmp_path / "wheels" / WHEEL, "w") as wheel:
        wheel.writestr("llguidance/__init__.py", "")
    result = _run(tmp_path, "--dry-run", "--no-prepare")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "dry run: all phases ran" in result.stdout
    assert "ready" in result.stdout
    # The report's JSON is printed as Markdown; check the float32 numbers it states.
    verdict = result.stdout.split("## Verdict", 1)[1]
    assert "- logits_float32_le_1e-3: True" in verdict
    assert "- greedy_float32_16_of_16: True" in verdict
