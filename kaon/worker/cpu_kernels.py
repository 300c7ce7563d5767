"""Load the C++ CPU kernels when the engine loads, so that no request ever waits on a compile.

The forward pass only reads what was loaded here (``cpu_fused.ops_for``,
``cpu_decode.loaded_kernel``): a kernel not loaded at start-up is the plain-torch path for the
life of the process.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from kaon.attention import cpu_decode
from kaon.kernels import cpp_build, cpu_fused, cpu_gemm, gguf_matmul
from kaon.layers.packed_linear import pack_linear_weights

logger = logging.getLogger(__name__)


def load_cpu_kernels(device: torch.device, dtype: torch.dtype) -> dict[str, bool]:
    """Build (once per install) or import the GGUF block GEMM (CPU, any activation dtype), and
    the fused ops, the decode attention kernel and the small-batch float32 GEMM (float32 on CPU,
    the only case they serve).

    Returns which kernels are in use, e.g. ``{"gguf_blocks": True, "fused_ops": True,
    "decode_attention": True, "gemm": True}`` (empty when none applies).
    """
    if device.type != "cpu":
        return {}
    start = time.perf_counter()
    builds_before = cpp_build.num_builds
    in_use = {"gguf_blocks": gguf_matmul.load_kernels() is not None}
    if dtype == torch.float32:
        in_use["fused_ops"] = cpu_fused.load_ops() is not None
        in_use["decode_attention"] = cpu_decode.load_kernel() is not None
        in_use["gemm"] = cpu_gemm.load_ops() is not None
    verb = "built" if cpp_build.num_builds > builds_before else "loaded"
    names = ", ".join(name for name, used in in_use.items() if used) or "none (torch fallback)"
    logger.info("C++ CPU kernels %s in %.1f s: %s", verb, time.perf_counter() - start, names)
    return in_use


def pack_linear_weights_for_cpu(model: nn.Module) -> int:
    """After loading: put the float32 linear weights into the GEMM kernel's panel layout (when
    ``load_cpu_kernels`` loaded it; the plain weights stay otherwise). Returns how many."""
    start = time.perf_counter()
    count = pack_linear_weights(model, cpu_gemm.loaded_ops())
    if count:
        logger.info("packed %d float32 linear weights for the AVX2 GEMM in %.2f s", count,
                    time.perf_counter() - start)  # fmt: skip
    return count
