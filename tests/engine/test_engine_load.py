"""What loading an engine does before it serves anything, seen as a Python user sees it.

A fresh process with no logging configuration runs ``LLM(quantization="int4")`` and one request:
its stderr shows the load steps at INFO (reading the file, the C++ kernels, the KV cache, the
quantization by name), the KV cache has its model-derived default size (four full 8,192-token
sequences), the C++ kernels are loaded before the request and the request compiles nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys

from kaon.attention import cpu_decode
from kaon.kernels import cpp_build, cpu_fused, cpu_gemm, gguf_matmul
from kaon.sampling_params import SamplingParams

SCRIPT = r"""
import json
from kaon import LLM, SamplingParams
from kaon.attention import cpu_decode
from kaon.kernels import cpp_build, cpu_fused

llm = LLM(quantization="int4")
state = {
    "ops_loaded": cpu_fused._ops is not cpu_fused._UNSET,
    "kernel_loaded": cpu_decode._kernel is not cpu_decode._UNSET,
    "kernels": llm.engine.executor.driver.cpu_kernels,
    "builds_at_load": cpp_build.num_builds,
    "max_model_len": llm.engine.max_model_len,
    "num_blocks": llm.engine.kv_cache_manager.block_pool.num_blocks,
}
params = SamplingParams(temperature=0.0, max_tokens=8)
output = llm.generate(["The capital of France is"], params, use_tqdm=False)[0]
state["text"] = output.outputs[0].text
state["builds_after_request"] = cpp_build.num_builds
print(json.dumps(state))
"""


def test_python_load_logs_its_steps_and_loads_kernels_before_the_first_request():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout.strip().splitlines()[-1])
    log = result.stderr
    assert state["ops_loaded"] and state["kernel_loaded"]
    assert state["builds_after_request"] == state["builds_at_load"]  # no compile in the request
    assert state["max_model_len"] == 8192 and state["num_blocks"] == 4 * 512
    assert state["text"].startswith(" Paris")
    assert "INFO kaon.models.loader.loader: reading " in log and "(GGUF, " in log
    assert "C++ CPU kernels " in log
    assert "int4 weights (group 32)" in log
    assert "allocated the KV cache: 2048 blocks of 16 tokens, 1440 MiB torch.float32" in log
    if all(state["kernels"].values()):
        assert "C++ CPU kernels loaded" in log or "C++ CPU kernels built" in log


def test_shared_engine_loaded_its_kernels_and_a_request_builds_nothing(llm):
    assert cpu_fused._ops is not cpu_fused._UNSET
    assert cpu_decode._kernel is not cpu_decode._UNSET
    loaded = llm.engine.executor.driver.cpu_kernels
    assert loaded == {"gguf_blocks": gguf_matmul.loaded_kernels() is not None,
                      "fused_ops": cpu_fused._ops is not None,
                      "decode_attention": cpu_decode._kernel is not None,
                      "gemm": cpu_gemm.loaded_ops() is not None}  # fmt: skip
    builds = cpp_build.num_builds
    params = SamplingParams(temperature=0.0, max_tokens=8)
    output = llm.generate(["The capital of France is"], params, use_tqdm=False)[0]
    assert output.outputs[0].text.startswith(" Paris")
    assert cpp_build.num_builds == builds
