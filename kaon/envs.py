"""The only module that reads the environment (KAON_* variables)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """KAON_CACHE_DIR, else $XDG_CACHE_HOME/kaon, else ~/.cache/kaon."""
    if value := os.environ.get("KAON_CACHE_DIR"):
        return Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kaon"


def kernel_cache_dir() -> Path:
    """KAON_KERNEL_CACHE_DIR, else <cache_dir()>/kernels: where the C++ CPU kernels are built once
    per install (kaon.kernels.cpp_build). torch's TORCH_EXTENSIONS_DIR is not used."""
    if value := os.environ.get("KAON_KERNEL_CACHE_DIR"):
        return Path(value)
    return cache_dir() / "kernels"


def kernel_build_timeout() -> float:
    """KAON_KERNEL_BUILD_TIMEOUT (default 300): seconds a process waits for another one building
    the C++ kernels before it gives up and runs on torch."""
    return float(os.environ.get("KAON_KERNEL_BUILD_TIMEOUT", "300"))


def cxx() -> str:
    """CXX (default c++): the C++ compiler torch's extension builder runs."""
    return os.environ.get("CXX") or "c++"


def log_level() -> str:
    """KAON_LOG_LEVEL (default INFO)."""
    return os.environ.get("KAON_LOG_LEVEL", "INFO").upper()


def disable_cpp_attention() -> bool:
    """KAON_DISABLE_CPP_ATTENTION=1 keeps CPU decode attention on the plain torch path."""
    return os.environ.get("KAON_DISABLE_CPP_ATTENTION", "0").strip().lower() in ("1", "true", "yes")


def disable_cpp_ops() -> bool:
    """KAON_DISABLE_CPP_OPS=1 keeps RMSNorm, RoPE + KV write, SwiGLU and the float32 linear
    layers (``kaon.kernels.cpu_gemm``) on the torch path."""
    return os.environ.get("KAON_DISABLE_CPP_OPS", "0").strip().lower() in ("1", "true", "yes")


def prepend_to_path(directory: str) -> None:
    """Put ``directory`` first on PATH (once), e.g. the venv's bin so its ninja is found."""
    path = os.environ.get("PATH", "")
    if directory not in path.split(os.pathsep):
        os.environ["PATH"] = directory + os.pathsep + path if path else directory


def tp_timeout_seconds() -> float:
    """KAON_TP_TIMEOUT (default 600): seconds a tensor-parallel rank waits for its peers (the
    join at start-up, each collective) before the step fails with an error instead of hanging."""
    return float(os.environ.get("KAON_TP_TIMEOUT", "600"))


def fail_on_stop_string() -> str | None:
    """KAON_TEST_FAIL_ON_STOP (tests only, default unset): a request whose ``stop`` list holds
    this exact string raises while its output is processed, so tests can check that a failure
    in one request fails that request alone. Unset or empty: never."""
    return os.environ.get("KAON_TEST_FAIL_ON_STOP") or None


def triton_interpret() -> bool:
    """TRITON_INTERPRET=1 (Triton's own variable): Triton kernels run on CPU tensors through its
    interpreter; kaon then lets its CUDA Triton kernels take CPU tensors (tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() == "1"
