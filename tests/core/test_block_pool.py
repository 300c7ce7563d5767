"""BlockPool and KVCacheManager, pure Python (no model, no torch)."""

import pytest

from kaon.core.block_hash import ROOT_HASH, extend_block_hashes, hash_block_tokens
from kaon.core.block_pool import BlockPool
from kaon.core.kv_cache_manager import KVCacheManager
from kaon.request import Request
from kaon.sampling_params import SamplingParams


def make_request(request_id: str, token_ids: list[int], **params) -> Request:
    return Request(request_id, token_ids, SamplingParams(**params), eos_token_ids={0})


def test_free_list_is_lru_and_reference_counted():
    pool = BlockPool(4)
    first = pool.get_new_blocks(3)
    assert [b.block_id for b in first] == [0, 1, 2]
    assert pool.num_free_blocks == 1
    pool.touch([first[0]])  # a second owner
    pool.free_blocks(list(reversed(first)))
    # Block 0 is still held by its second owner; 2 and 1 were appended in reverse order.
    assert pool.free_block_queue.block_ids() == [3, 2, 1]
    assert first[0].ref_cnt == 1
    pool.free_blocks([first[0]])
    assert pool.free_block_queue.block_ids() == [3, 2, 1, 0]
    with pytest.raises(ValueError, match="only 4 free"):
        pool.get_new_blocks(5)


def test_cached_free_block_is_reused_until_evicted():
    pool = BlockPool(2)
    (block,) = pool.get_new_blocks(1)
    pool.cache_block(block, block_hash=1234)
    pool.free_blocks([block])
    assert pool.get_cached_block(1234) is block  # free but still cached
    pool.touch([block])  # a prefix hit takes it back out of the free list
    assert pool.num_free_blocks == 1 and block.ref_cnt == 1
    pool.free_blocks([block])
    pool.get_new_blocks(2)  # hands out both blocks: the cached one is evicted
    assert pool.get_cached_block(1234) is None and block.block_hash is None


def test_block_hashes_chain_over_the_whole_prefix():
    hashes: list[int] = []
    extend_block_hashes(hashes, [1, 2, 3, 4, 5], block_size=2)
    assert hashes == [
        hash_block_tokens(ROOT_HASH, [1, 2]),
        hash_block_tokens(hash_block_tokens(ROOT_HASH, [1, 2]), [3, 4]),
    ]
    other: list[int] = []
    extend_block_hashes(other, [9, 9, 3, 4], block_size=2)
    assert other[1] != hashes[1]  # same tokens, different prefix


def test_allocate_slots_and_prefix_hit():
    manager = KVCacheManager(num_blocks=8, block_size=4)
    first = make_request("a", list(range(10)))
    assert manager.get_computed_blocks(first) == ([], 0)
    assert len(manager.allocate_slots(first, 10)) == 3  # ceil(10 / 4)
    first.num_computed_tokens = 10
    assert manager.num_free_blocks == 5
    # Same first 8 tokens: two full blocks hit; the last token is always recomputed.
    second = make_request("b", list(range(8)) + [99, 98])
    hits, num_hit_tokens = manager.get_computed_blocks(second)
    assert num_hit_tokens == 8
    assert [b.block_id for b in hits] == manager.get_block_ids("a")[:2]
    second.num_computed_tokens = num_hit_tokens
    manager.allocate_slots(second, 2, hits)
    assert manager.get_block_ids("b")[:2] == manager.get_block_ids("a")[:2]
    assert manager.num_free_blocks == 4
    manager.free(first)
    manager.free(second)
    assert manager.num_free_blocks == 8
    assert manager.usage() == 0.0


def test_whole_prompt_hit_leaves_one_token_to_compute():
    manager = KVCacheManager(num_blocks=8, block_size=4)
    first = make_request("a", list(range(8)))
    manager.allocate_slots(first, 8)
    manager.free(first)
    again = make_request("b", list(range(8)))
    hits, num_hit_tokens = manager.get_computed_blocks(again)
    assert num_hit_tokens == 4 and len(hits) == 1


def test_allocation_failure_changes_nothing():
    manager = KVCacheManager(num_blocks=2, block_size=4)
    request = make_request("a", list(range(12)))
    assert manager.allocate_slots(request, 12) is None
    assert manager.num_free_blocks == 2
    assert manager.get_block_ids("a") == []


def test_prompt_logprobs_requests_skip_the_prefix_cache():
    manager = KVCacheManager(num_blocks=8, block_size=4)
    first = make_request("a", list(range(9)))
    manager.allocate_slots(first, 9)
    second = make_request("b", list(range(9)), prompt_logprobs=1)
    assert manager.get_computed_blocks(second) == ([], 0)


def test_block_pool_rejects_empty():
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(0)
