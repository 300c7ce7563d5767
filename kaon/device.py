"""Pick the device and default dtype once, at engine start."""

from __future__ import annotations

import os

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu.

    Raises:
        ValueError: naming ``device`` when cuda is asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> float32 on CPU (exact reference numerics), bfloat16 on CUDA."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {name!r}")
    return _DTYPES[name]


def resolve_kv_cache_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """``auto`` -> the activation ``dtype``; else bfloat16 or float32 (stored keys/values are
    cast on write and read back in the activation dtype)."""
    if name == "auto":
        return dtype
    if name not in ("bfloat16", "float32"):
        raise ValueError(f"kv_cache_dtype must be auto, bfloat16 or float32; got {name!r}")
    return _DTYPES[name]


def total_memory_bytes(device: torch.device) -> int:
    """Total memory of the device in bytes (MemTotal from /proc/meminfo on CPU): unlike free
    memory, it does not depend on what else the machine is doing."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on the device in bytes (MemAvailable from /proc/meminfo on CPU)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3  # no /proc: assume 4 GiB


def to_device(values: list[int] | list[list[int]], dtype: torch.dtype, device: torch.device):
    """A tensor of ``values`` on ``device``. On CUDA it is built in pinned host memory (torch's
    caching host allocator, so no per-step cudaHostAlloc) and copied with ``non_blocking=True``:
    the copy is queued on the current stream instead of blocking the host until the GPU is idle.
    """
    tensor = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return tensor if device.type == "cpu" else tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
