"""Size and allocate the paged KV cache once, at start-up."""

from __future__ import annotations

import logging
import math

import torch

from kaon.device import available_memory_bytes, total_memory_bytes
from kaon.models.architecture import ArchitectureConfig

logger = logging.getLogger(__name__)


def bytes_per_block(config: ArchitectureConfig, block_size: int, dtype: torch.dtype) -> int:
    """K and V bytes of one KV cache block across all layers."""
    element_size = torch.tensor([], dtype=dtype).element_size()
    return block_size * config.kv_bytes_per_token * element_size


# The default KV cache (no kv_cache_memory_bytes / kv_cache_memory_fraction): room for this many
# full-length sequences (fewer if max_num_seqs is lower), bounded by a fixed cap (as vLLM's CPU
# backend's fixed 4 GiB KV cache space) and a fraction of TOTAL memory, so that a user's context
# length never depends on what else the machine was doing when the engine started.
DEFAULT_KV_CACHE_SEQS = 4
DEFAULT_KV_CACHE_CAP_BYTES = 4 * 1024**3
DEFAULT_KV_CACHE_TOTAL_FRACTION = 0.25
DEFAULT_MAX_MODEL_LEN_CAP = 8192  # tokens, when max_model_len is not set
_FLAGS = "--kv-cache-memory-bytes, --max-model-len or --max-num-seqs"


def default_max_model_len(config: ArchitectureConfig, asked: int | None) -> int:
    """``asked`` if set, else the model's context length capped at 8192 tokens."""
    return asked or min(config.max_position_embeddings, DEFAULT_MAX_MODEL_LEN_CAP)


def kv_cache_budget_bytes(
    config: ArchitectureConfig,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    max_model_len: int,
    max_num_seqs: int,
    memory_fraction: float | None = None,
) -> int:
    """The default KV cache size in bytes (see ``DEFAULT_KV_CACHE_*``); with
    ``memory_fraction``, that fraction of the device's total memory on CPU, and of its free
    memory on CUDA (``fraction_budget_bytes``).

    Raises:
        ValueError: naming the flags when one ``max_model_len`` sequence alone exceeds the bound.
    """
    total = total_memory_bytes(device)
    if memory_fraction is not None:
        free = available_memory_bytes(device) if device.type == "cuda" else None
        return fraction_budget_bytes(memory_fraction, total, free)
    per_sequence = -(-max_model_len // block_size) * bytes_per_block(config, block_size, dtype)
    bound = min(DEFAULT_KV_CACHE_CAP_BYTES, int(total * DEFAULT_KV_CACHE_TOTAL_FRACTION))
    if per_sequence > bound:
        raise ValueError(
            f"one sequence of max_model_len {max_model_len} tokens needs "
            f"{per_sequence / 2**20:.0f} MiB of KV cache, more than the default bound of "
            f"{bound / 2**20:.0f} MiB (the smaller of 4 GiB and 25% of total memory): lower "
            "--max-model-len, or set --kv-cache-memory-bytes"
        )
    return min(per_sequence * min(max_num_seqs, DEFAULT_KV_CACHE_SEQS), bound)


# CUDA: memory kept free beside the KV cache for activations, the sampler and CUDA graphs.
CUDA_ACTIVATION_RESERVE_BYTES = 1024**3


def fraction_budget_bytes(fraction: float, total_bytes: int, free_bytes: int | None) -> int:
    """``kv_cache_memory_fraction`` in bytes: of ``total_bytes`` on CPU (``free_bytes`` None, so
    the size does not depend on what else the machine runs); on CUDA, of ``free_bytes`` (free
    GPU memory once the weights are loaded, as vLLM sizes its cache after loading) less
    ``CUDA_ACTIVATION_RESERVE_BYTES`` for activations and graphs.

    Raises:
        ValueError: naming ``kv_cache_memory_fraction`` when nothing is left for the cache.
    """
    if free_bytes is None:
        return int(total_bytes * fraction)
    budget = int((free_bytes - CUDA_ACTIVATION_RESERVE_BYTES) * fraction)
    if budget <= 0:
        raise ValueError(
            f"kv_cache_memory_fraction {fraction}: only {free_bytes / 2**20:.0f} MiB of GPU "
            "memory is free after loading the weights, less than the "
            f"{CUDA_ACTIVATION_RESERVE_BYTES >> 20} MiB kept for activations"
        )
    return budget


def num_blocks_for_budget(
    config: ArchitectureConfig,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    memory_bytes: int | None,
    memory_fraction: float | None = None,
    max_model_len: int | None = None,
    max_num_seqs: int = DEFAULT_KV_CACHE_SEQS,
) -> int:
    """KV cache blocks that fit ``memory_bytes``, else the default budget
    (``kv_cache_budget_bytes`` for ``max_model_len``, default: the model's, at most 8192).

    Raises:
        ValueError: naming the flags when the budget holds no block or exceeds the memory
            available now.
    """
    budget = memory_bytes
    if budget is None:
        length = default_max_model_len(config, max_model_len)
        budget = kv_cache_budget_bytes(
            config, block_size, dtype, device, length, max_num_seqs, memory_fraction
        )
    per_block = bytes_per_block(config, block_size, dtype)
    num_blocks = budget // per_block
    if num_blocks < 1:
        raise ValueError(
            f"kv_cache_memory_bytes {budget} is smaller than one KV cache block ({per_block} bytes)"
        )
    available = available_memory_bytes(device)
    if budget > available:
        raise ValueError(
            f"the KV cache needs {budget / 2**20:.0f} MiB but only {available / 2**20:.0f} MiB of "
            f"memory is available: set {_FLAGS} lower"
        )
    return int(num_blocks)


def allocate_kv_cache(
    config: ArchitectureConfig,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One (key_cache, value_cache) pair per layer, each
    [num_blocks, block_size, num_kv_heads, head_dim], zero-filled so that padded (masked) slots
    never hold NaN.

    On CPU all pairs are views of one zeroed anonymous mapping (``numpy.zeros`` -> calloc ->
    mmap): the kernel hands out zero pages on first write, so a block costs resident memory only
    once a request writes to it, as on a GPU the memory is reserved but (unlike ``torch.zeros``,
    which writes every byte) a 1.4 GiB cache with a few short requests adds megabytes of RSS.
    """
    shape = (num_blocks, block_size, config.num_key_value_heads, config.head_dim)
    if device.type != "cpu":
        return [
            (
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
            )
            for _ in range(config.num_hidden_layers)
        ]
    cache = _untouched_zeros((config.num_hidden_layers, 2, *shape), dtype)
    return [(layer[0], layer[1]) for layer in cache.unbind(0)]


def _untouched_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor of zeros, 64-byte aligned, whose pages are not yet resident (numpy's calloc
    of a large block is a fresh anonymous mapping; the tensor keeps the array alive). All-zero
    bits are 0 in every float and integer dtype."""
    import numpy as np

    itemsize = torch.empty((), dtype=dtype).element_size()
    num_bytes = math.prod(shape) * itemsize
    raw = np.zeros(num_bytes + _ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % _ALIGNMENT  # calloc'd mappings start 16 bytes into a page
    return torch.from_numpy(raw[start : start + num_bytes]).view(dtype).view(shape)


_ALIGNMENT = 64  # bytes: one cache line, as torch's own CPU allocator aligns
