"""Size and allocate the paged KV cache once, at start-up."""

from __future__ import annotations

import logging

import torch

from kaon.device import available_memory_bytes
from kaon.models.architecture import ArchitectureConfig

logger = logging.getLogger(__name__)


def bytes_per_block(config: ArchitectureConfig, block_size: int, dtype: torch.dtype) -> int:
    """K and V bytes of one KV cache block across all layers."""
    element_size = torch.tensor([], dtype=dtype).element_size()
    return block_size * config.kv_bytes_per_token * element_size


def num_blocks_for_budget(
    config: ArchitectureConfig,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    memory_bytes: int | None,
    memory_fraction: float,
) -> int:
    """Blocks that fit in ``memory_bytes`` (or ``memory_fraction`` of free memory).

    Raises:
        ValueError: naming ``kv_cache_memory_bytes`` when the budget holds no block.
    """
    budget = memory_bytes
    if budget is None:
        budget = int(available_memory_bytes(device) * memory_fraction)
    per_block = bytes_per_block(config, block_size, dtype)
    num_blocks = budget // per_block
    if num_blocks < 1:
        raise ValueError(
            f"kv_cache_memory_bytes {budget} is smaller than one KV cache block ({per_block} bytes)"
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
    never hold NaN."""
    shape = (num_blocks, block_size, config.num_key_value_heads, config.head_dim)
    return [
        (
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=dtype, device=device),
        )
        for _ in range(config.num_hidden_layers)
    ]
