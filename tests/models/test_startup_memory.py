"""Loading a model logs each start-up step with its seconds, and its peak RSS while loading stays
within 1.2x its RSS once loaded (issue 11). One engine load per subprocess, so that VmHWM is this
load's alone. Float32 (``quantization="none"``) dequantizes row chunks read from the file;
``auto`` reads each block tensor from the file into the buffer the model keeps (no copy through
the memory map). Measured here: default model 1.08x / 1.13x, Gemma 3 270M 1.08x / 1.11x."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")

CODE = r"""
import gc, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from kaon.engine.llm_engine import LLMEngine
model = sys.argv[2] if len(sys.argv) > 2 else None
engine = LLMEngine.from_options(model=model, max_model_len=1024, quantization=sys.argv[1])
gc.collect()
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmHWM"].split()[0]), int(status["VmRSS"].split()[0]))
"""


@pytest.mark.parametrize("quantization", ["none", "auto"])
def test_default_model_load_logs_steps_and_peak_rss_within_1_2x_loaded(quantization):
    _check_load([quantization])


def test_gemma3_native_load_peak_rss_within_1_2x_loaded(gemma3_gguf_path):
    _check_load(["auto", gemma3_gguf_path])


def _check_load(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CODE, *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    steps = dict(re.findall(r"start-up: ([\w+ ]+?) in ([0-9.]+) s", result.stderr))
    for step in ("C++ kernels", "GGUF metadata", "tokenizer", "weights", "KV cache"):
        assert step in steps, (step, result.stderr[-2000:])
        assert float(steps[step]) >= 0
    peak_kib, loaded_kib = map(int, result.stdout.split())
    assert peak_kib <= 1.2 * loaded_kib, f"peak {peak_kib} KiB, loaded {loaded_kib} KiB"
