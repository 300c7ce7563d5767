"""N-gram prompt lookup (Saxena 2023, "Prompt Lookup Decoding"; vLLM's ``ngram`` method).

Draft for a request whose tokens (prompt + output so far) are ``t[0 .. n-1]``:

    for size in prompt_lookup_max .. prompt_lookup_min:
        find the latest i < n - size with t[i : i + size] == t[n - size : n]
        if found: propose t[i + size : i + size + k]  (fewer when the sequence ends first)

Plain Python over token id lists; no torch.
"""

from __future__ import annotations


class NgramProposer:
    """Stateless: each call scans the request's tokens backwards (O(n * size) in the worst case,
    well under a millisecond for a few thousand tokens)."""

    def __init__(self, prompt_lookup_min: int, prompt_lookup_max: int) -> None:
        self.prompt_lookup_min = prompt_lookup_min
        self.prompt_lookup_max = prompt_lookup_max

    def propose(self, token_ids: list[int], num_tokens: int) -> list[int]:
        """Up to ``num_tokens`` draft token ids continuing ``token_ids`` (empty: no match)."""
        total = len(token_ids)
        if num_tokens < 1:
            return []
        for size in range(min(self.prompt_lookup_max, total - 1), self.prompt_lookup_min - 1, -1):
            start = _latest_match(token_ids, size)
            if start is not None:
                return token_ids[start + size : start + size + num_tokens]
        return []


def _latest_match(token_ids: list[int], size: int) -> int | None:
    """Largest i < len - size with token_ids[i : i + size] equal to the last ``size`` tokens."""
    total = len(token_ids)
    suffix = token_ids[total - size :]
    last = suffix[-1]
    # Scan candidate end positions right to left; compare the whole window only when the last
    # token matches (cheap pre-filter).
    for end in range(total - 2, size - 2, -1):
        if token_ids[end] == last and token_ids[end - size + 1 : end + 1] == suffix:
            return end - size + 1
    return None
