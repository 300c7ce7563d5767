"""Start llama-cpp-python's OpenAI server with llama.cpp's extra CPU buffer types turned off.

Usage: python scripts/llamacpp_server.py [llama_cpp.server arguments...]  (with the Python of a
venv that has ``llama-cpp-python[server]``).

Why: on CPUs that report AMX (Intel Sapphire Rapids and later), llama.cpp repacks the weights
into its AMX buffer type and runs matrix products with AMX tiles. In a VM whose kernel does not
grant AMX tile state to processes, the first ``ldtilecfg`` raises a general protection fault, and
the server dies on its first prompt of more than one token (seen here: dmesg names
``ggml_backend_amx_mul_mat`` in libggml-cpu.so). ``use_extra_bufts = False`` (a field of
``llama_model_params``) keeps the weights in the plain CPU buffer, so llama.cpp uses its AVX2 /
AVX-512 kernels instead. llama-cpp-python does not expose the field, so this wrapper sets it in
the default parameters before the server builds its model.
"""

from __future__ import annotations

import runpy

import llama_cpp.llama_cpp as llama_cpp_lib

_default_params = llama_cpp_lib.llama_model_default_params


def _params_without_extra_buffers():  # noqa: ANN202 - a ctypes struct
    params = _default_params()
    params.use_extra_bufts = False
    return params


llama_cpp_lib.llama_model_default_params = _params_without_extra_buffers

if __name__ == "__main__":
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
