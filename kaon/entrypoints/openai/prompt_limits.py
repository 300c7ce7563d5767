"""A cheap bound on a text prompt's length, checked before it is tokenized whole.

A token stands for at most ``max_token_chars`` characters (the longest vocabulary entry, special
tokens included; a character is at least one UTF-8 byte), so a text of more than
``max_model_len * max_token_chars`` characters has more than ``max_model_len`` tokens and can
never fit: it is refused without tokenizing it (a 5 MB prompt took 10-49 s of CPU and 641 MB
of memory to be refused after tokenization).

Exception: a tokenizer that merges a run of unknown characters into one ``<unk>`` token could
fit more characters; such prompts are refused too.
"""

from __future__ import annotations

import threading

from kaon.entrypoints.openai.serving_common import OpenAIError

_lock = threading.Lock()
_max_token_chars: dict[int, int] = {}  # id(tokenizer) -> longest token, in bytes


def max_token_chars(tokenizer) -> int:
    """Bytes of the longest token of ``tokenizer`` (computed once per tokenizer, ~0.1 s)."""
    key = id(tokenizer)
    with _lock:
        if key not in _max_token_chars:
            _max_token_chars[key] = max(
                len(tokenizer.id_to_token_bytes(token_id))
                for token_id in range(tokenizer.vocab_size)
            )
        return _max_token_chars[key]


def check_prompt_chars(text: str, param: str, tokenizer, max_model_len: int) -> None:
    """Raises OpenAIError 400 (code context_length_exceeded, naming ``param``) when ``text`` has
    more characters than ``max_model_len`` tokens can hold."""
    limit = max_model_len * max_token_chars(tokenizer)
    if len(text) > limit:
        raise OpenAIError(
            400, f"{param}: this model's maximum context length is {max_model_len} tokens, and "
            f"the prompt has {len(text)} characters, more than {max_model_len} tokens can hold "
            f"(at most {limit} characters)", param=param, code="context_length_exceeded",
        )  # fmt: skip
