"""Load the C++ CPU kernels when the engine loads, so that no request ever waits on a compile.

The forward pass only reads what was loaded here (``cpu_fused.ops_for``,
``cpu_decode.loaded_kernel``): a kernel not loaded at start-up is the plain-torch path for the
life of the process.
"""

from __future__ import annotations

import logging
import time

import torch

from kaon.attention import cpu_decode
from kaon.kernels import cpp_build, cpu_fused, gguf_matmul

logger = logging.getLogger(__name__)


def load_cpu_kernels(device: torch.device, dtype: torch.dtype) -> dict[str, bool]:
    """Build (once per install) or import the GGUF block GEMM (CPU, any activation dtype), the
    fused ops and the decode attention kernel (float32 on CPU, the only case they serve).

    Returns which kernels are in use, e.g. ``{"gguf_blocks": True, "fused_ops": True,
    "decode_attention": True}`` (empty when none applies).
    """
    if device.type != "cpu":
        return {}
    start = time.perf_counter()
    builds_before = cpp_build.num_builds
    in_use = {"gguf_blocks": gguf_matmul.load_kernels() is not None}
    if dtype == torch.float32:
        in_use["fused_ops"] = cpu_fused.load_ops() is not None
        in_use["decode_attention"] = cpu_decode.load_kernel() is not None
    verb = "built" if cpp_build.num_builds > builds_before else "loaded"
    names = ", ".join(name for name, used in in_use.items() if used) or "none (torch fallback)"
    logger.info("C++ CPU kernels %s in %.1f s: %s", verb, time.perf_counter() - start, names)
    return in_use
