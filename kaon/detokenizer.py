"""Incremental detokenization with stop strings, one request at a time.

Invariant: when no stop string matched, the concatenation of all `update()` deltas and
`finish()` equals `tokenizer.decode(output_ids, skip_special_tokens)`; a stop string cuts the
text right before it (or after it, with `include_stop_str_in_output`).

Text flows through two hold-backs:

    token ids -> [UTF-8 hold-back] -> text -> [stop-string hold-back] -> emitted deltas

* Byte-level tokenizers: token bytes go through an incremental UTF-8 decoder, which holds the
  bytes of an unfinished character (O(1) per token, exact).
* Others (SentencePiece): the prefix/read-offset window of vLLM's detokenize_incrementally;
  text ending in U+FFFD or in a run of <0xXX> byte tokens is held. The window starts with the
  prompt's last tokens, so (as in vLLM) the first output token keeps a word-initial space that
  one-shot decode(output_ids) would strip; without a prompt the invariant holds exactly.
"""

from __future__ import annotations

import codecs

from kaon.tokenizer import Tokenizer

# Prompt tokens decoded as context before the first output token (vLLM uses 5 too).
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Turns a request's output token ids into text deltas, watching for stop strings.

    Raises ValueError naming `stop` if a stop string is empty.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: list[int] | None,
        skip_special_tokens: bool = True,
        stop: list[str] | None = None,
        include_stop_str_in_output: bool = False,
    ) -> None:
        stop = list(stop or [])
        if any(not isinstance(s, str) or not s for s in stop):
            raise ValueError("stop: stop strings must be non-empty strings")
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._stop = stop
        self._include_stop = include_stop_str_in_output
        self._skip_ids = set(tokenizer.all_special_ids) if skip_special_tokens else set()
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        # Window state for non-byte-level tokenizers: ids = prompt tail + output ids.
        context = list(prompt_token_ids or [])[-_CONTEXT_TOKENS:]
        self._ids = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._pending = ""  # decoded text held back as a possible stop-string prefix
        self._output_text = ""
        self._finished = False
        self._stop_reason: str | None = None

    @property
    def output_text(self) -> str:
        """All text emitted so far (stop string excluded unless include_stop_str_in_output)."""
        return self._output_text

    @property
    def stop_reason(self) -> str | None:
        """The stop string that ended the text, or None."""
        return self._stop_reason

    def update(self, new_token_ids: list[int]) -> tuple[str, str | None]:
        """Add sampled token ids; returns (text delta, matched stop string or None).

        After a stop string matched (or finish()), further ids are ignored and ("", None) is
        returned; the caller should end the request.
        """
        if self._finished:
            return "", None
        return self._emit(self._decode(new_token_ids), final=False)

    def finish(self) -> str:
        """End of generation: flush held-back text (an unfinished stop-string prefix, a trailing
        incomplete character as U+FFFD) and return the last delta."""
        if self._finished:
            return ""
        if self._tokenizer.is_byte_level:
            text = self._utf8.decode(b"", final=True)
        else:
            text = self._decode_window(final=True)
        delta, _ = self._emit(text, final=True)
        self._finished = True
        return delta

    def _decode(self, new_token_ids: list[int]) -> str:
        """New complete text for `new_token_ids` (before stop-string handling)."""
        if self._tokenizer.is_byte_level:
            data = b"".join(
                self._tokenizer.id_to_token_bytes(i)
                for i in new_token_ids
                if i not in self._skip_ids
            )
            return self._utf8.decode(data)
        self._ids.extend(new_token_ids)
        return self._decode_window(final=False)

    def _decode_window(self, final: bool) -> str:
        """vLLM's prefix/read-offset step: decode ids[prefix:] and ids[prefix:read] and diff.

        Context before the read offset keeps word-initial spaces that a decoder strips at the
        start of a text (SentencePiece). The diff is held while it ends in U+FFFD, and while
        the last shown token is a <0xXX> byte token: tokenizers' ByteFallback decodes a run of
        them as one group (all U+FFFD if the run is not valid UTF-8), so a later byte token can
        change the text of earlier ones.
        """
        if not final and self._ends_in_byte_run():
            return ""
        decode, skip = self._tokenizer.decode, self._skip_special_tokens
        prefix_text = decode(self._ids[self._prefix_offset : self._read_offset], skip)
        new_text = decode(self._ids[self._prefix_offset :], skip)
        if len(new_text) <= len(prefix_text) or (new_text.endswith("\ufffd") and not final):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return new_text[len(prefix_text) :]

    def _ends_in_byte_run(self) -> bool:
        """Whether the last unread token that decode() shows is a byte-fallback token."""
        byte_ids = self._tokenizer.byte_fallback_ids
        for token_id in reversed(self._ids[self._read_offset :]):
            if token_id not in self._skip_ids:
                return token_id in byte_ids
        return False

    def _emit(self, text: str, final: bool) -> tuple[str, str | None]:
        """Pass `text` through the stop-string hold-back; returns (delta, matched stop)."""
        buffer = self._pending + text
        match = self._find_stop(buffer)
        if match is not None:
            start, stop = match
            delta = buffer[: start + len(stop)] if self._include_stop else buffer[:start]
            self._pending, self._finished, self._stop_reason = "", True, stop
            self._output_text += delta
            return delta, stop
        # Hold back the longest tail that could still grow into a stop string. Invariant: no
        # stop string can start inside emitted text, so only `buffer` needs searching.
        cut = len(buffer) if final else self._held_start(buffer)
        self._pending = buffer[cut:]
        self._output_text += buffer[:cut]
        return buffer[:cut], None

    def _find_stop(self, text: str) -> tuple[int, str] | None:
        """(start, stop string) of the stop string that completes first in `text`, or None."""
        found = [(text.find(s), s) for s in self._stop]
        found = [(start + len(s), start, s) for start, s in found if start >= 0]
        if not found:
            return None
        _, start, stop = min(found)
        return start, stop

    def _held_start(self, text: str) -> int:
        """Index of the earliest suffix of `text` that is a proper prefix of a stop string."""
        longest = max((len(s) for s in self._stop), default=1)
        for start in range(max(0, len(text) - longest + 1), len(text)):
            tail = text[start:]
            if any(s.startswith(tail) for s in self._stop):
                return start
        return len(text)
