"""Suffix decoding (Oliaro et al. 2024, "SuffixDecoding"; vLLM's ``suffix`` method), simplified.

A suffix index maps every context of 1 .. ``max_depth`` tokens seen so far to counts of the token
that followed it (a suffix trie flattened into a dict keyed by the context tuple). There is one
index per running request (its prompt and output, updated as tokens arrive) and one shared index
over the last ``max_requests`` finished responses (counts are removed again when a response falls
out). A draft is a greedy walk:

    context = the request's tokens
    repeat k times:
        for depth in max_depth .. min_depth: the last ``depth`` tokens of context (+ drafts so far)
            seen in the request's index (preferred, most frequent successor) or the shared one?
            -> append that successor, continue
        none seen -> stop

Plain Python, no torch.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

Context = tuple[int, ...]


class SuffixIndex:
    """Context (1 .. max_depth tokens) -> Counter of the next token."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.successors: dict[Context, Counter[int]] = {}

    def add(self, token_ids: list[int], start: int, sign: int = 1) -> None:
        """Count (sign=1) or uncount (sign=-1) the successors of positions ``start ..`` of
        ``token_ids``: for each token t[j], every context t[j-d : j] with 1 <= d <= max_depth."""
        for j in range(max(start, 1), len(token_ids)):
            next_token = token_ids[j]
            for depth in range(1, min(self.max_depth, j) + 1):
                context = tuple(token_ids[j - depth : j])
                counts = self.successors.get(context)
                if counts is None:
                    counts = self.successors[context] = Counter()
                counts[next_token] += sign
                if counts[next_token] <= 0:
                    del counts[next_token]
                    if not counts:
                        del self.successors[context]

    def best_successor(self, context: Context) -> int | None:
        counts = self.successors.get(context)
        if not counts:
            return None
        return max(counts.items(), key=lambda item: item[1])[0]


class SuffixProposer:
    """Per-request suffix indexes plus a shared index of recent responses."""

    def __init__(self, min_depth: int, max_depth: int, max_requests: int) -> None:
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.max_requests = max_requests
        self.shared = SuffixIndex(max_depth)
        self.recent: OrderedDict[str, list[int]] = OrderedDict()  # request_id -> its output ids
        self.requests: dict[str, tuple[SuffixIndex, int]] = {}  # index, tokens indexed so far

    def propose(self, request_id: str, token_ids: list[int], num_tokens: int) -> list[int]:
        """Up to ``num_tokens`` draft ids continuing ``token_ids`` (prompt + output so far)."""
        index, num_indexed = self.requests.get(request_id) or (SuffixIndex(self.max_depth), 0)
        index.add(token_ids, num_indexed)  # only the tokens that arrived since the last call
        self.requests[request_id] = (index, len(token_ids))
        draft: list[int] = []
        tail = list(token_ids[-self.max_depth :])
        while len(draft) < num_tokens:
            token = self._next(index, tail)
            if token is None:
                break
            draft.append(token)
            tail = (tail + [token])[-self.max_depth :]
        return draft

    def _next(self, index: SuffixIndex, tail: list[int]) -> int | None:
        for depth in range(min(self.max_depth, len(tail)), self.min_depth - 1, -1):
            context = tuple(tail[len(tail) - depth :])
            for source in (index, self.shared):
                token = source.best_successor(context)
                if token is not None:
                    return token
        return None

    def finish(self, request_id: str, output_token_ids: list[int]) -> None:
        """Drop the request's index; its response joins the shared index (oldest ones leave)."""
        self.requests.pop(request_id, None)
        if not output_token_ids:
            return
        self.recent[request_id] = list(output_token_ids)
        self.shared.add(self.recent[request_id], 0)
        while len(self.recent) > self.max_requests:
            _, old = self.recent.popitem(last=False)
            self.shared.add(old, 0, sign=-1)
