"""Chained hashes of full KV cache blocks, the keys of the prefix cache.

A block's hash covers its own token ids and, through the parent hash, every token before it, so two
requests share a cached block only when their whole prefixes up to that block's end are equal
(the scheme of vLLM's automatic prefix caching).

    block 0: h0 = H(ROOT, tokens[0:B])   block 1: h1 = H(h0, tokens[B:2B])   ...

H is Python's built-in tuple hash (64-bit, deterministic for ints). A collision would make two
different prefixes share KV; with 2**64 values and a few thousand cached blocks that chance is
about 1e-12 per lookup, which we accept as vLLM did before offering sha256.
"""

from __future__ import annotations

ROOT_HASH = 0x6B616F6E  # "kaon": the parent of the first block


def hash_block_tokens(parent_hash: int, token_ids: tuple[int, ...] | list[int]) -> int:
    """Hash of one full block given its parent's hash and its ``block_size`` token ids."""
    return hash((parent_hash, tuple(token_ids)))


def extend_block_hashes(block_hashes: list[int], token_ids: list[int], block_size: int) -> None:
    """Append the hashes of the full blocks of ``token_ids`` not yet in ``block_hashes``.

    ``block_hashes`` is a request's running list (one entry per full block); it is extended in
    place, so each block is hashed once over the request's life.
    """
    num_full_blocks = len(token_ids) // block_size
    parent = block_hashes[-1] if block_hashes else ROOT_HASH
    for index in range(len(block_hashes), num_full_blocks):
        start = index * block_size
        parent = hash_block_tokens(parent, token_ids[start : start + block_size])
        block_hashes.append(parent)
