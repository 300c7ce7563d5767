"""Logprobs in OpenAI's two response shapes.

Completions (legacy), one entry per token, parallel lists::

    {"tokens": ["He", "llo"], "token_logprobs": [-0.1, -2.3],
     "top_logprobs": [{"He": -0.1, "A": -2.5}, ...], "text_offset": [0, 2]}

Chat, one object per token::

    {"content": [{"token": "He", "logprob": -0.1, "bytes": [72, 101],
                  "top_logprobs": [{"token": "He", "logprob": -0.1, "bytes": [72, 101]}, ...]}]}

Logprobs are natural logs; -inf (a token masked out) is sent as -9999.0 as OpenAI does, since
JSON has no infinity. A position's dict holds the chosen token (any rank) and the top-k by rank.
"""

from __future__ import annotations

import math
from typing import Any

from kaon.outputs import Logprob, PositionLogprobs

_MIN_LOGPROB = -9999.0


def finite(value: float) -> float:
    return value if math.isfinite(value) else _MIN_LOGPROB


class LogprobFormatter:
    """Decodes token ids of logprob entries (cached) and builds both response shapes."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._strings: dict[int, str] = {}

    def token_str(self, token_id: int, logprob: Logprob | None = None) -> str:
        if logprob is not None and logprob.decoded_token is not None:
            return logprob.decoded_token
        text = self._strings.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._strings[token_id] = text
        return text

    def _top(self, position: PositionLogprobs, num_top: int) -> list[tuple[int, Logprob]]:
        ranked = [(tid, lp) for tid, lp in position.items() if lp.rank is not None]
        ranked.sort(key=lambda item: item[1].rank)  # type: ignore[arg-type, return-value]
        return [(tid, lp) for tid, lp in ranked if lp.rank <= num_top]  # type: ignore[operator]

    def completion(
        self,
        token_ids: list[int],
        positions: list[PositionLogprobs | None],
        num_top: int,
        text_offset: int,
    ) -> dict[str, Any]:
        """Completions-shape logprobs for ``token_ids``; ``positions[i]`` is None for the first
        prompt token (nothing to condition on). ``text_offset`` is the character offset of the
        first token in the choice's text (after the echoed prompt, for instance)."""
        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        for token_id, position in zip(token_ids, positions, strict=True):
            chosen = position.get(token_id) if position is not None else None
            text = self.token_str(token_id, chosen)
            tokens.append(text)
            offsets.append(text_offset)
            text_offset += len(text)
            if position is None or chosen is None:
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            token_logprobs.append(finite(chosen.logprob))
            top: dict[str, float] = {}
            for tid, logprob in [(token_id, chosen), *self._top(position, num_top)]:
                top.setdefault(self.token_str(tid, logprob), finite(logprob.logprob))
            top_logprobs.append(top)
        return {
            "text_offset": offsets,
            "token_logprobs": token_logprobs,
            "tokens": tokens,
            "top_logprobs": top_logprobs,
        }

    def chat(
        self, token_ids: list[int], positions: list[PositionLogprobs], num_top: int
    ) -> dict[str, Any]:
        """Chat-shape logprobs for generated ``token_ids``."""
        content = []
        for token_id, position in zip(token_ids, positions, strict=True):
            chosen = position[token_id]
            entry = self._chat_entry(token_id, chosen)
            top = self._top(position, num_top)
            entry["top_logprobs"] = [self._chat_entry(tid, logprob) for tid, logprob in top]
            content.append(entry)
        return {"content": content}

    def _chat_entry(self, token_id: int, logprob: Logprob) -> dict[str, Any]:
        return {
            "token": self.token_str(token_id, logprob),
            "logprob": finite(logprob.logprob),
            "bytes": list(self.tokenizer.id_to_token_bytes(token_id)),
        }
