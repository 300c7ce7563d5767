"""C++ kernels are built once per install under kaon's own lock, and no process waits forever.

One real (tiny) kernel is compiled, once, in a private cache directory:

1. process A is SIGKILLed mid-build, leaving its lock files (ours and torch's FileBaton ``lock``);
2. process B then builds it (the stale files do not block it);
3. process C, started while B holds the build lock, gives up after its 3 s wait timeout with a
   log line and computes with torch;
4. process D imports B's build without compiling.

All four answer ``add_one([0, 1, 2]) == [1, 2, 3]``, each within a bounded time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

SCRIPT = r"""
import logging, sys
import torch
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from kaon.kernels import cpp_build
SOURCE = "torch::Tensor add_one(torch::Tensor x) { return x + 1; }"
module = cpp_build.load_cpp_module("kaon_test_add_one", SOURCE, ["add_one"])
x = torch.arange(3.0)
result = x + 1 if module is None else module.add_one(x)
print("torch" if module is None else "cpp", result.tolist(), "builds", cpp_build.num_builds)
"""
EXPECTED = "[1.0, 2.0, 3.0]"


def _env(cache_dir, **extra: str) -> dict[str, str]:
    return {**os.environ, "KAON_KERNEL_CACHE_DIR": str(cache_dir), **extra}


def _start(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,  # its own process group: ninja and c++ die with it
    )  # fmt: skip


def _wait_for_line(process: subprocess.Popen, needle: str, timeout_s: float = 300) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"no {needle!r} in the log: {''.join(lines)}")


def test_killed_build_and_concurrent_start_never_hang(tmp_path):
    env = _env(tmp_path)
    first = _start(env)
    _wait_for_line(first, "compiling C++ kernels kaon_test_add_one")
    time.sleep(1.0)
    os.killpg(first.pid, signal.SIGKILL)  # killed mid-build
    first.wait(timeout=30)
    (build_dir,) = tmp_path.iterdir()
    assert (build_dir / "kaon.lock").exists() and not (build_dir / "built").exists()
    (build_dir / "lock").touch()  # torch's FileBaton, as a killed torch build leaves it

    builder = _start(env)
    _wait_for_line(builder, "compiling C++ kernels kaon_test_add_one")
    waiter = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=_env(tmp_path, KAON_KERNEL_BUILD_TIMEOUT="3"),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert waiter.returncode == 0, waiter.stderr
    assert waiter.stdout.split("builds")[0].strip() == f"torch {EXPECTED}"
    # It found the lock held (by the builder's pid), logged, and gave up after its 3 s timeout.
    assert f"waiting for process {builder.pid}, which is building" in waiter.stderr
    assert "gave up waiting 3 s" in waiter.stderr

    out, err = builder.communicate(timeout=900)
    assert builder.returncode == 0, err
    assert out.strip() == f"cpp {EXPECTED} builds 1"
    assert (build_dir / "built").exists() and not (build_dir / "lock").exists()

    later = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180
    )
    assert later.returncode == 0, later.stderr
    assert later.stdout.strip() == f"cpp {EXPECTED} builds 0"
    assert "loaded from" in later.stderr


def test_no_compiler_falls_back_to_torch_with_a_log_line(tmp_path):
    env = _env(tmp_path, CXX="/nonexistent/c++")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"torch {EXPECTED} builds 0"
    assert "no C++ compiler ('/nonexistent/c++') found" in result.stderr


def test_unwritable_cache_dir_falls_back_to_torch(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    env = _env(blocker / "kernels")  # mkdir fails: its parent is a file
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"torch {EXPECTED} builds 0"
    assert "C++ kernels kaon_test_add_one unavailable" in result.stderr
