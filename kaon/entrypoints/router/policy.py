"""The data-parallel routing policy: pick the replica for a request by prefix affinity and load.

Pure Python (no torch, no I/O) so it is unit tested without a model. The proxy calls
``Router.route`` once per request and ``Router.release`` when the request ends.

Load is *outstanding tokens*: for every in-flight request, its prompt tokens plus the tokens it
may still generate (``max_tokens`` times ``n``), charged at admission and released when the
response ends. Request counts hide that one 2,000-token prompt costs as much as twenty short ones.

Prefix affinity follows the idea of SGLang's cache-aware router (an approximate radix tree of
what each worker has cached) with a flat LRU map instead of a tree:

    prompt token ids  [t0 ... t15 | t16 ... t31 | t32 ... t40]
    chained hashes     h1 = H(0, block 1), h2 = H(h1, block 2)      (partial block: no hash)
    affinity map       h -> {replicas that served a prompt with that prefix}   (LRU, bounded)

The longest prefix found in the map names the replicas whose prefix cache most likely holds the
prompt's KV cache blocks (only full blocks are cached, as in kaon's KVCacheManager). Among them
the least loaded wins, unless it is much busier than the least loaded replica overall:
``affine_tokens > least_tokens * balance_rel + balance_abs_tokens`` falls back to least load.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


class NoHealthyReplicaError(RuntimeError):
    """Every replica is down (starting, restarting or dead)."""


def block_prefix_hashes(token_ids: list[int], block_size: int, max_blocks: int = 64) -> list[int]:
    """Chained hashes of the first full blocks of ``token_ids``: entry i identifies tokens
    ``[0, (i + 1) * block_size)``. A partial last block gets no hash (it is never cached).

    Python's hash of ints and tuples is not randomised, so equal prefixes give equal hashes for
    the life of the process (the map lives in one process).

    Raises:
        ValueError: naming block_size or max_blocks when not positive.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if max_blocks < 1:
        raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
    hashes: list[int] = []
    parent = 0
    num_blocks = min(len(token_ids) // block_size, max_blocks)
    for i in range(num_blocks):
        parent = hash((parent, tuple(token_ids[i * block_size : (i + 1) * block_size])))
        hashes.append(parent)
    return hashes


@dataclass
class ReplicaLoad:
    """What the router knows about one replica."""

    index: int
    healthy: bool = False
    num_requests: int = 0  # in-flight requests
    num_tokens: int = 0  # outstanding tokens of those requests (prompt + max to generate)
    num_routed: int = 0  # requests routed here since start (any outcome)


@dataclass
class Ticket:
    """One routed request; give it back with ``Router.release`` (idempotent)."""

    replica: int
    num_tokens: int
    reason: str  # "affinity" or "load"
    matched_blocks: int  # prefix blocks found in the affinity map
    released: bool = False


class Router:
    """Replica choice by prefix affinity and outstanding tokens (see the module docstring).

    Args:
        num_replicas: replicas 0 .. num_replicas - 1, all down until ``set_healthy``.
        balance_abs_tokens: an affine replica may carry this many outstanding tokens more than
            the least loaded one before requests leave it...
        balance_rel: ...on top of ``balance_rel`` times the least loaded replica's tokens.
        max_prefix_entries: LRU capacity of the affinity map (hashes of full blocks).

    Raises:
        ValueError: naming a non-positive argument.
    """

    def __init__(
        self,
        num_replicas: int,
        balance_abs_tokens: int = 1024,
        balance_rel: float = 1.5,
        max_prefix_entries: int = 65536,
    ) -> None:
        for name, value in (("num_replicas", num_replicas), ("max_prefix_entries",
                            max_prefix_entries), ("balance_rel", balance_rel)):  # fmt: skip
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if balance_abs_tokens < 0:
            raise ValueError(f"balance_abs_tokens must be >= 0, got {balance_abs_tokens}")
        self.replicas = [ReplicaLoad(i) for i in range(num_replicas)]
        self.balance_abs_tokens = balance_abs_tokens
        self.balance_rel = balance_rel
        self.max_prefix_entries = max_prefix_entries
        # block hash -> replicas holding that prefix (dict as an ordered set); LRU order.
        self._prefixes: OrderedDict[int, dict[int, None]] = OrderedDict()

    # ------------------------------------------------------------------ health

    def set_healthy(self, index: int, healthy: bool) -> None:
        """Mark a replica up or down. A replica that goes down forgets its affinity entries:
        when it comes back (a new process) its prefix cache is empty."""
        replica = self.replicas[index]
        if replica.healthy and not healthy:
            self._forget(index)
        replica.healthy = healthy

    def healthy_replicas(self) -> list[ReplicaLoad]:
        return [r for r in self.replicas if r.healthy]

    def least_loaded(self) -> ReplicaLoad:
        """The healthy replica with the fewest outstanding tokens (then requests, then index).

        Raises:
            NoHealthyReplicaError: no replica is up.
        """
        healthy = self.healthy_replicas()
        if not healthy:
            raise NoHealthyReplicaError("no engine replica is available (all are down)")
        return min(healthy, key=lambda r: (r.num_tokens, r.num_requests, r.index))

    # ------------------------------------------------------------------ routing

    def choose(self, prefix_hashes: list[int]) -> tuple[int, str, int]:
        """(replica index, reason, matched blocks) for a prompt, without recording anything.

        Raises:
            NoHealthyReplicaError: no replica is up.
        """
        least = self.least_loaded()
        for depth in range(len(prefix_hashes), 0, -1):
            holders = self._prefixes.get(prefix_hashes[depth - 1])
            candidates = [self.replicas[i] for i in holders or () if self.replicas[i].healthy]
            if not candidates:
                continue
            affine = min(candidates, key=lambda r: (r.num_tokens, r.num_requests, r.index))
            limit = least.num_tokens * self.balance_rel + self.balance_abs_tokens
            if affine.num_tokens <= limit:
                return affine.index, "affinity", depth
            break  # the replicas holding the longest prefix are too busy: balance instead
        return least.index, "load", 0

    def route(self, prefix_hashes: list[int], num_tokens: int) -> Ticket:
        """Choose a replica, charge it ``num_tokens`` outstanding tokens and remember that it
        now holds the prompt's prefix blocks.

        Raises:
            NoHealthyReplicaError: no replica is up.
            ValueError: naming num_tokens when negative.
        """
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        index, reason, depth = self.choose(prefix_hashes)
        replica = self.replicas[index]
        replica.num_requests += 1
        replica.num_tokens += num_tokens
        replica.num_routed += 1
        self._remember(prefix_hashes, index)
        return Ticket(index, num_tokens, reason, depth)

    def release(self, ticket: Ticket) -> None:
        """The request ended (finished, failed or cancelled); safe to call more than once."""
        if ticket.released:
            return
        ticket.released = True
        replica = self.replicas[ticket.replica]
        replica.num_requests -= 1
        replica.num_tokens -= ticket.num_tokens
        assert replica.num_requests >= 0 and replica.num_tokens >= 0, replica

    # ------------------------------------------------------------------ affinity map

    def num_prefix_entries(self) -> int:
        return len(self._prefixes)

    def _remember(self, prefix_hashes: list[int], index: int) -> None:
        for block_hash in prefix_hashes:
            holders = self._prefixes.pop(block_hash, None) or {}
            holders[index] = None
            self._prefixes[block_hash] = holders  # re-inserted: most recently used
        while len(self._prefixes) > self.max_prefix_entries:
            self._prefixes.popitem(last=False)

    def _forget(self, index: int) -> None:
        for block_hash in list(self._prefixes):
            holders = self._prefixes[block_hash]
            holders.pop(index, None)
            if not holders:
                del self._prefixes[block_hash]
