"""Build-once, cache-forever loading of inline C++ CPU extensions.

``load_cpp_module(name, source, functions)`` compiles ``source`` with ``load_inline`` the first
time it is asked for in a process (the object files are cached in ``TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``, so later processes only import them), for the CPU's vector
ISA (``-mavx2 -mfma`` on AVX2/AVX-512 machines). A failed build or import returns ``None`` and is
logged once: every caller keeps a plain-torch path for that case.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from types import ModuleType

import torch

from kaon import envs

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_modules: dict[str, ModuleType | None] = {}


def arch_flags() -> tuple[str, list[str]]:
    """Name suffix and gcc flags for the CPU's vector ISA (one cached build per ISA)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX2", "AVX512"):
        return "avx2", ["-mavx2", "-mfma"]
    return "generic", []


def load_cpp_module(name: str, source: str, functions: list[str]) -> ModuleType | None:
    """The compiled module ``{name}_{isa}`` exposing ``functions``; None if it cannot be built.

    Thread-safe; the build runs at most once per process.
    """
    if name in _modules:
        return _modules[name]
    with _lock:
        if name not in _modules:
            module = None
            try:
                from torch.utils.cpp_extension import load_inline

                # The ninja that pip installed beside this interpreter, even without an activated
                # venv.
                envs.prepend_to_path(os.path.dirname(sys.executable))
                suffix, flags = arch_flags()
                module = load_inline(
                    name=f"{name}_{suffix}",
                    cpp_sources=source,
                    functions=functions,
                    extra_cflags=["-O3", "-fopenmp", *flags],
                    extra_ldflags=["-fopenmp"],
                    verbose=False,
                )
            except Exception as error:  # any compiler/linker/import failure
                logger.info("C++ kernels %s unavailable (%s): using torch", name, error)
            _modules[name] = module
    return _modules[name]
