"""KVCacheManager: which KV cache blocks each request holds, and prefix-cache lookups.

A request's block table is its list of blocks; token ``t`` of the request lives in slot
``t % block_size`` of block ``block_ids[t // block_size]``.
"""

from __future__ import annotations

from kaon.core.block_hash import extend_block_hashes
from kaon.core.block_pool import BlockPool, KVCacheBlock
from kaon.request import Request


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative integers."""
    return -(-a // b)


class KVCacheManager:
    """Allocates blocks to requests from one BlockPool and reuses cached prefixes."""

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.block_pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        # How many of a request's leading blocks are already registered in the prefix cache.
        self.num_cached_blocks: dict[str, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return self.block_pool.num_free_blocks

    def usage(self) -> float:
        return self.block_pool.usage()

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """Longest cached prefix of the request, in whole blocks, and its length in tokens.

        At least one token is always left to compute, since the last prompt position must run
        through the model to produce logits. Requests asking for prompt logprobs skip the cache.
        """
        if not self.enable_caching or request.sampling_params.prompt_logprobs is not None:
            return [], 0
        extend_block_hashes(request.block_hashes, request.all_token_ids, self.block_size)
        max_hit_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVCacheBlock] = []
        for block_hash in request.block_hashes[:max_hit_blocks]:
            block = self.block_pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        self.block_pool.num_queried_blocks += max_hit_blocks
        self.block_pool.num_hit_blocks += len(hits)
        return hits, len(hits) * self.block_size

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: list[KVCacheBlock] | None = None,
    ) -> list[KVCacheBlock] | None:
        """Make room for ``num_new_tokens`` more tokens of ``request``.

        ``new_computed_blocks`` are prefix-cache hits found by ``get_computed_blocks`` for a request
        being admitted; their tokens must already be counted in ``request.num_computed_tokens``.

        Returns:
            The newly allocated blocks, or None (with nothing changed) when the pool has too few
            free blocks, in which case the scheduler preempts or waits.
        """
        new_computed_blocks = new_computed_blocks or []
        blocks = self.req_to_blocks.setdefault(request.request_id, [])
        num_total_tokens = request.num_computed_tokens + num_new_tokens
        num_required = cdiv(num_total_tokens, self.block_size) - len(blocks)
        num_new_blocks = num_required - len(new_computed_blocks)
        # Hits on free cached blocks leave the free list, so they count against what is free.
        num_evictable_hits = sum(1 for block in new_computed_blocks if block.ref_cnt == 0)
        if num_new_blocks > self.block_pool.num_free_blocks - num_evictable_hits:
            if not blocks:
                del self.req_to_blocks[request.request_id]
            return None
        self.block_pool.touch(new_computed_blocks)
        blocks.extend(new_computed_blocks)
        new_blocks = self.block_pool.get_new_blocks(max(num_new_blocks, 0))
        blocks.extend(new_blocks)
        self._cache_full_blocks(request, num_total_tokens)
        return new_blocks

    def _cache_full_blocks(self, request: Request, num_tokens: int) -> None:
        """Register the blocks that are full once this step's tokens are written."""
        if not self.enable_caching:
            return
        num_full = min(num_tokens, request.num_tokens) // self.block_size
        first = self.num_cached_blocks.get(request.request_id, 0)
        if num_full <= first:
            return
        extend_block_hashes(request.block_hashes, request.all_token_ids, self.block_size)
        blocks = self.req_to_blocks[request.request_id]
        for index in range(first, num_full):
            self.block_pool.cache_block(blocks[index], request.block_hashes[index])
        self.num_cached_blocks[request.request_id] = num_full

    def free(self, request: Request) -> None:
        """Return all of a request's blocks to the pool (cached ones stay reusable)."""
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.num_cached_blocks.pop(request.request_id, None)
        self.block_pool.free_blocks(list(reversed(blocks)))

    def free_tail_blocks(self, request: Request) -> None:
        """Return the blocks past ``request.num_computed_tokens`` (rejected draft tokens only;
        never hashed) to the pool."""
        blocks = self.req_to_blocks.get(request.request_id)
        if not blocks:
            return
        num_needed = cdiv(request.num_computed_tokens, self.block_size)
        if len(blocks) > num_needed:
            tail = blocks[num_needed:]
            del blocks[num_needed:]
            self.block_pool.free_blocks(list(reversed(tail)))

    def get_block_ids(self, request_id: str) -> list[int]:
        return [block.block_id for block in self.req_to_blocks.get(request_id, [])]

    def prefix_cache_hit_rate(self) -> float:
        """Fraction of looked-up full prompt blocks found in the cache (0 when none looked up)."""
        queried = self.block_pool.num_queried_blocks
        return self.block_pool.num_hit_blocks / queried if queried else 0.0
