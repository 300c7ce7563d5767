"""Small probes for scripts/bench_peers.sh (standard library only, so any Python runs it).

Usage:
  python scripts/peer_probe.py machine OUT.json
      CPU model, vendor, core count, the SIMD flags that matter (AVX2, FMA, AVX-512*, AMX*, VNNI)
      and the date, from /proc/cpuinfo.
  python scripts/peer_probe.py amx-denied
      exit 0 when the CPU reports AMX but the kernel refuses a process AMX tile state (the
      arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) request fails: VMs that hide it), else 1.
  python scripts/peer_probe.py rss-tree PID OUT.json [--interval S]
      poll the resident set size of PID and all its descendants (summed, from /proc/*/status
      VmRSS) until PID exits, then write the peak in MiB (and the peak per-process VmHWM sum).
  python scripts/peer_probe.py set OUT.json KEY VALUE [KEY VALUE...]
      merge string fields into a JSON object file (created when missing).
  python scripts/peer_probe.py wait-health URL PID OUT.json [--timeout S] [--started T]
      poll URL until HTTP 200 (or PID exits / timeout); write the seconds from T (a
      time.time() taken just before the server was started; default now) to the first 200.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import sys
import time
import urllib.request

_FLAGS_OF_INTEREST = ("avx2", "fma", "f16c", "avx_vnni", "avx512", "amx")


def machine() -> dict:
    """CPU model, vendor, logical cores, SIMD flags of interest, UTC date (ISO 8601)."""
    info: dict[str, str] = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "vendor_id", "flags") and key not in info:
                info[key] = value.strip()
    flags = [flag for flag in info.get("flags", "").split() if flag.startswith(_FLAGS_OF_INTEREST)]
    return {
        "cpu_model": info.get("model name", "unknown"),
        "vendor": info.get("vendor_id", "unknown"),
        "num_cpus": os.cpu_count(),
        "simd_flags": flags,
        "amx_denied": amx_denied(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def amx_denied() -> bool:
    """True when /proc/cpuinfo lists amx_tile but arch_prctl refuses the AMX tile data state.

    Linux 5.16+ makes a process request permission for AMX state (XFEATURE_XTILEDATA = 18)
    with arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023); a VM whose XCR0 lacks it answers an error,
    and the first AMX instruction then faults (llama.cpp's AMX kernels crash on it).
    """
    with open("/proc/cpuinfo") as f:
        if "amx_tile" not in f.read():
            return False
    libc = ctypes.CDLL(None, use_errno=True)
    sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18
    return libc.syscall(sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) != 0


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(name))
    return tree


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pids(pid: int) -> list[int]:
    """PID and all its descendants (a snapshot of /proc)."""
    tree, pids, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(tree.get(current, []))
    return pids


def rss_tree(pid: int, out: str, interval: float = 0.25) -> dict:
    """Poll until ``pid`` exits; write and return peak summed VmRSS and VmHWM of its tree, MiB."""
    peak_rss = peak_hwm = 0
    while os.path.exists(f"/proc/{pid}") and _status_kib(pid, "VmRSS"):
        pids = tree_pids(pid)
        peak_rss = max(peak_rss, sum(_status_kib(p, "VmRSS") for p in pids))
        peak_hwm = max(peak_hwm, sum(_status_kib(p, "VmHWM") for p in pids))
        _write(out, {"peak_rss_tree_mib": peak_rss / 1024, "vm_hwm_tree_mib": peak_hwm / 1024})
        time.sleep(interval)
    return {"peak_rss_tree_mib": peak_rss / 1024, "vm_hwm_tree_mib": peak_hwm / 1024}


def wait_health(url: str, pid: int, out: str, timeout: float, started: float) -> bool:
    """Poll ``url`` every 0.1 s; write {"start_to_health_s": s} on the first 200. False when
    the process died or ``timeout`` seconds passed first."""
    while time.time() - started < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    _write(out, {"start_to_health_s": time.time() - started})
                    return True
        except OSError:
            pass
        if not os.path.exists(f"/proc/{pid}") or _is_zombie(pid):
            return False
        time.sleep(0.1)
    return False


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _write(path: str, data: dict) -> None:
    merged = {}
    if os.path.exists(path):
        with open(path) as f:
            merged = json.load(f)
    merged.update(data)
    with open(path + ".tmp", "w") as f:
        json.dump(merged, f, indent=1)
    os.replace(path + ".tmp", path)


def main(argv: list[str]) -> int:
    """Dispatch one probe; returns the exit code."""
    if not argv:
        print(__doc__)
        return 2
    command, args = argv[0], argv[1:]
    if command == "machine":
        _write(args[0], machine())
        return 0
    if command == "set":
        _write(args[0], dict(zip(args[1::2], args[2::2], strict=True)))
        return 0
    if command == "amx-denied":
        return 0 if amx_denied() else 1
    if command == "rss-tree":
        interval = float(args[3]) if len(args) > 3 and args[2] == "--interval" else 0.25
        rss_tree(int(args[0]), args[1], interval)
        return 0
    if command == "wait-health":
        url, pid, out = args[0], int(args[1]), args[2]
        options = dict(zip(args[3::2], args[4::2], strict=False))
        timeout = float(options.get("--timeout", 900))
        started = float(options.get("--started", time.time()))
        return 0 if wait_health(url, pid, out, timeout, started) else 1
    print(f"unknown probe {command!r}\n{__doc__}")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
