"""Build-once-per-install loading of inline C++ CPU extensions, with a lock that cannot hang.

``load_cpp_module(name, source, functions)`` returns the compiled module, building it only when
no build exists for this exact (kernel source, torch version, Python ABI, CPU ISA):

    <kernel cache dir>/<name>_<isa>-<key>/      key = sha256 of the above, 16 hex digits
        <name>_<isa>.so                         the extension, imported directly once built
        built                                   written after a successful build + import
        kaon.lock                               fcntl.flock'ed while one process builds

The cache directory is ``KAON_KERNEL_CACHE_DIR`` (default ``~/.cache/kaon/kernels``), private to
kaon: torch's shared ``~/.cache/torch_extensions`` is not used, so two venvs with different
torches never rebuild over each other, and torch's FileBaton (a ``lock`` file that a killed build
leaves behind, after which every later process waits on it forever) is never waited on: the
kernel drops an flock when its holder dies, a waiter gives up after ``KAON_KERNEL_BUILD_TIMEOUT``
seconds (logging every 10 s), and a builder that holds our lock deletes any stale torch ``lock``.

Every failure (no C++ compiler, a compiler or import error, the wait timing out) returns ``None``
and is logged: each caller keeps a plain-torch path. The engine calls this once, at load
(``kaon.worker.cpu_kernels``); the forward pass only reads what was loaded and never compiles.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch

from kaon import envs

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_modules: dict[str, ModuleType | None] = {}
# Compiles started in this process; tests check that serving a request starts none.
num_builds = 0
_WAIT_LOG_INTERVAL_S = 10.0


def arch_flags() -> tuple[str, list[str]]:
    """Name suffix and gcc flags for the CPU's vector ISA (one cached build per ISA)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX2", "AVX512"):
        return "avx2", ["-mavx2", "-mfma"]
    return "generic", []


def build_key(source: str, functions: list[str], flags: list[str]) -> str:
    """16 hex digits identifying a build: source, exported functions, compiler flags, torch
    version, the Python ABI (SOABI) and the machine architecture."""
    digest = hashlib.sha256()
    abi = sysconfig.get_config_var("SOABI") or sys.implementation.cache_tag or ""
    for part in (source, ",".join(functions), " ".join(flags), torch.__version__, abi,
                 platform.machine()):  # fmt: skip
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def build_directory(name: str, source: str, functions: list[str]) -> Path:
    """Where the build of ``name`` for this source, torch, Python and ISA lives."""
    suffix, flags = arch_flags()
    return envs.kernel_cache_dir() / f"{name}_{suffix}-{build_key(source, functions, flags)}"


def load_cpp_module(name: str, source: str, functions: list[str]) -> ModuleType | None:
    """The compiled module ``{name}_{isa}`` exposing ``functions``; None if it cannot be had.

    Imports a previous build when there is one; otherwise compiles (minutes on a slow machine,
    logged at INFO) under the build lock. Thread-safe; decided at most once per process.
    """
    if name in _modules:
        return _modules[name]
    with _lock:
        if name not in _modules:
            try:
                _modules[name] = _load_or_build(name, source, functions)
            except OSError as error:  # e.g. a read-only or full cache directory
                logger.warning("C++ kernels %s unavailable (%s): using torch", name, error)
                _modules[name] = None
    return _modules[name]


def _load_or_build(name: str, source: str, functions: list[str]) -> ModuleType | None:
    suffix, flags = arch_flags()
    module_name = f"{name}_{suffix}"
    directory = build_directory(name, source, functions)
    if (directory / "built").exists():
        return _import(module_name, directory)
    compiler = envs.cxx()
    if shutil.which(compiler) is None:
        logger.info("no C++ compiler (%r) found: %s runs on plain torch (install g++ for the "
                    "faster CPU kernels)", compiler, name)  # fmt: skip
        return None
    directory.mkdir(parents=True, exist_ok=True)
    timeout = envs.kernel_build_timeout()
    with build_lock(directory / "kaon.lock", timeout, name) as acquired:
        if not acquired:
            logger.warning(
                "gave up waiting %.0f s for another process building %s "
                "(KAON_KERNEL_BUILD_TIMEOUT): this process uses torch",
                timeout, name,
            )  # fmt: skip
            return None
        if (directory / "built").exists():  # another process built it while we waited
            return _import(module_name, directory)
        return _build(module_name, source, functions, flags, directory)


def _build(
    module_name: str, source: str, functions: list[str], flags: list[str], directory: Path
) -> ModuleType | None:
    global num_builds
    from torch.utils.cpp_extension import load_inline

    # We hold the build lock: a torch FileBaton ``lock`` here is a killed build's leftover.
    (directory / "lock").unlink(missing_ok=True)
    # The ninja that pip installed beside this interpreter, even without an activated venv.
    envs.prepend_to_path(os.path.dirname(sys.executable))
    logger.info("compiling C++ kernels %s into %s: once per install (kernel source, torch, "
                "Python, CPU ISA); about a minute, longer on a busy machine", module_name,
                directory)  # fmt: skip
    start = time.perf_counter()
    num_builds += 1
    try:
        module = load_inline(
            name=module_name,
            cpp_sources=source,
            functions=functions,
            extra_cflags=["-O3", "-fopenmp", *flags],
            extra_ldflags=["-fopenmp"],
            build_directory=str(directory),
            verbose=False,
        )
    except Exception as error:  # any compiler/linker/import failure
        logger.warning("C++ kernels %s failed to build (%s): using torch", module_name, error)
        return None
    (directory / "built").write_text(f"{torch.__version__}\n")
    logger.info("compiled C++ kernels %s in %.1f s", module_name, time.perf_counter() - start)
    return module


def _import(module_name: str, directory: Path) -> ModuleType | None:
    """Import ``<directory>/<module_name>.so`` without torch's build machinery (no lock)."""
    path = directory / f"{module_name}.so"
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as error:
        logger.warning("C++ kernels %s could not be imported from %s (%s): using torch",
                       module_name, path, error)  # fmt: skip
        return None
    logger.info("C++ kernels %s loaded from %s", module_name, directory)
    return module


@contextmanager
def build_lock(path: Path, timeout_s: float, what: str) -> Iterator[bool]:
    """Hold an exclusive ``fcntl.flock`` on ``path``; yields False after ``timeout_s`` without it.

    The kernel releases the lock when its holder exits or is killed, so a lock file left on
    disk never blocks anyone. While waiting, logs the holder's pid every 10 s.
    """
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        next_log = time.monotonic()
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now >= deadline:
                    yield False
                    return
                if now >= next_log:
                    handle.seek(0)
                    holder = handle.read().strip() or "?"
                    logger.info(
                        "waiting for process %s, which is building %s (lock %s; giving up in "
                        "%.0f s)", holder, what, path, deadline - now,
                    )  # fmt: skip
                    next_log = now + _WAIT_LOG_INTERVAL_S
                time.sleep(0.1)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
