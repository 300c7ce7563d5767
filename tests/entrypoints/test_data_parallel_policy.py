"""The data-parallel routing policy (kaon/entrypoints/router/policy.py), without a model:
least outstanding tokens, prefix affinity with its load limit, dead replicas excluded."""

from __future__ import annotations

import pytest

from kaon.entrypoints.router.policy import NoHealthyReplicaError, Router, block_prefix_hashes


def healthy_router(num_replicas: int, **kwargs) -> Router:
    router = Router(num_replicas, **kwargs)
    for index in range(num_replicas):
        router.set_healthy(index, True)
    return router


def test_block_prefix_hashes_chain_full_blocks_only() -> None:
    assert block_prefix_hashes(list(range(15)), block_size=16) == []  # a partial block: no hash
    first = block_prefix_hashes(list(range(40)), block_size=16)
    assert len(first) == 2  # tokens 32..39 are a partial third block
    second = block_prefix_hashes([*range(16), *range(100, 116)], block_size=16)
    assert first[0] == second[0] and first[1] != second[1]  # same first block, then they differ
    shifted = block_prefix_hashes([99, *range(31)], block_size=16)
    assert shifted[1] != first[1]  # chained: block 2 alone equal is not enough
    assert len(block_prefix_hashes(list(range(1000)), block_size=16, max_blocks=4)) == 4
    with pytest.raises(ValueError, match="block_size"):
        block_prefix_hashes([1], block_size=0)


def test_least_outstanding_tokens_not_request_count() -> None:
    router = healthy_router(2)
    big = router.route([], num_tokens=1000)  # one long request on replica 0
    assert (big.replica, big.reason) == (0, "load")
    small = [router.route([], num_tokens=100) for _ in range(3)]
    # Replica 1 takes all three short ones: 300 tokens < 1000, although 3 requests > 1.
    assert [t.replica for t in small] == [1, 1, 1]
    assert (router.replicas[1].num_requests, router.replicas[1].num_tokens) == (3, 300)
    router.release(big)
    router.release(big)  # idempotent
    assert (router.replicas[0].num_requests, router.replicas[0].num_tokens) == (0, 0)
    assert router.route([], num_tokens=50).replica == 0


def test_prefix_affinity_follows_the_cached_prefix() -> None:
    router = healthy_router(3, balance_abs_tokens=500, balance_rel=1.0)
    system = list(range(32))  # two full blocks shared by a "system prompt"
    first = router.route(block_prefix_hashes([*system, 7, 8], 16), num_tokens=100)
    other = router.route(block_prefix_hashes(list(range(500, 540)), 16), num_tokens=100)
    assert other.replica != first.replica
    again = router.route(block_prefix_hashes([*system, 9, 9, 9], 16), num_tokens=100)
    assert (again.replica, again.reason, again.matched_blocks) == (first.replica, "affinity", 2)
    # Longest match wins: a prompt sharing only the first block of another replica's prompt.
    third = router.route(block_prefix_hashes([*range(500, 516), *range(900, 916)], 16), 10)
    assert (third.replica, third.matched_blocks) == (other.replica, 1)


def test_affinity_gives_way_when_the_affine_replica_is_much_busier() -> None:
    router = healthy_router(2, balance_abs_tokens=300, balance_rel=1.0)
    prefix = block_prefix_hashes(list(range(64)), 16)
    tickets = [router.route(prefix, num_tokens=100) for _ in range(4)]
    # 0, 100, 200, 300 outstanding tokens on replica 0 are within 0 * 1.0 + 300 of replica 1.
    assert [t.replica for t in tickets] == [0, 0, 0, 0]
    overflow = router.route(prefix, num_tokens=100)  # 400 > 300: balance instead
    assert (overflow.replica, overflow.reason) == (1, "load")
    # Both replicas now hold the prefix: affinity picks the less loaded holder.
    router.release(tickets[0])
    router.release(tickets[1])
    following = router.route(prefix, num_tokens=100)
    assert (following.replica, following.reason) == (1, "affinity")


def test_dead_replica_is_excluded_and_forgotten() -> None:
    router = healthy_router(2)
    prefix = block_prefix_hashes(list(range(32)), 16)
    assert router.route(prefix, 10).replica == 0
    router.set_healthy(0, False)
    rerouted = router.route(prefix, 10)
    assert (rerouted.replica, rerouted.reason) == (1, "load")  # its holder is dead
    assert all(router.route([], 10).replica == 1 for _ in range(5))  # never the dead one
    router.set_healthy(0, True)  # a fresh process: its old prefix entries were dropped
    assert router.choose(prefix) == (1, "affinity", 2)
    router.set_healthy(0, False)
    router.set_healthy(1, False)
    with pytest.raises(NoHealthyReplicaError):
        router.route(prefix, 10)


def test_affinity_map_is_a_bounded_lru() -> None:
    router = healthy_router(2, max_prefix_entries=2)
    old = block_prefix_hashes(list(range(16)), 16)
    router.route(old, 10)
    router.route(block_prefix_hashes(list(range(100, 132)), 16), 10)  # two entries: evicts old
    assert router.num_prefix_entries() == 2
    assert router.choose(old)[1] == "load"


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(ValueError, match="num_replicas"):
        Router(0)
    with pytest.raises(ValueError, match="balance_abs_tokens"):
        Router(2, balance_abs_tokens=-1)
    with pytest.raises(ValueError, match="num_tokens"):
        healthy_router(1).route([], num_tokens=-5)


def test_request_inspector_costs_and_keys() -> None:
    """The front's routing key and load from real request bodies, with the model's tokenizer
    read from the GGUF metadata (no weights)."""
    import json

    from kaon.entrypoints.openai.serving_common import OpenAIError
    from kaon.entrypoints.router.request_info import RequestInspector
    from kaon.entrypoints.router.server import load_tokenizer

    tokenizer = load_tokenizer(None)
    inspector = RequestInspector(tokenizer, block_size=16, max_model_len=2048)
    prompt = "The lighthouse keeper wrote in his log every evening. " * 4
    num_prompt = len(tokenizer.encode(prompt))
    info = inspector.completion(json.dumps({"prompt": prompt, "max_tokens": 10, "n": 2}).encode())
    assert info.num_tokens == num_prompt + 2 * 10 and not info.stream
    assert info.prefix_hashes == block_prefix_hashes(tokenizer.encode(prompt), 16)
    no_limit = inspector.completion(json.dumps({"prompt": [1, 2, 3], "max_tokens": None}).encode())
    assert no_limit.num_tokens == 2048 and no_limit.prefix_hashes == []  # the rest of the context
    batch = inspector.completion(json.dumps({"prompt": ["a b", "c"], "stream": True}).encode())
    assert batch.stream and batch.num_tokens == 3 + 2 * 16  # OpenAI's default max_tokens 16
    messages = [{"role": "system", "content": prompt}, {"role": "user", "content": "Hi"}]
    chat = inspector.chat(json.dumps({"messages": messages, "max_tokens": 5}).encode())
    other = inspector.chat(json.dumps({"messages": [messages[0]], "max_tokens": 5}).encode())
    assert len(chat.prefix_hashes) >= 2 and chat.prefix_hashes[:2] == other.prefix_hashes[:2]
    with pytest.raises(OpenAIError) as error:
        inspector.chat(json.dumps({"messages": [{"role": "bot", "content": "x"}]}).encode())
    assert (error.value.status, error.value.param) == (400, "messages[0].role")
