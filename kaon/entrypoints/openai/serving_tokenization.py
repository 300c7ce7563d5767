"""POST /tokenize, POST /detokenize and GET /tokenizer_info, in vLLM's shapes (lm-evaluation-
harness's ``tokenizer_backend=remote`` uses them, so it needs no local tokenizer files)."""

from __future__ import annotations

from typing import Any

from kaon.entrypoints.openai.protocol import DetokenizeRequest, TokenizeRequest, message_dicts
from kaon.entrypoints.openai.serving_common import OpenAIError, ServingContext, bad_request


def tokenize(context: ServingContext, request: TokenizeRequest) -> dict[str, Any]:
    """Token ids of a prompt, or of messages rendered with the chat template.

    Raises:
        OpenAIError: 404 unknown model; 400 naming messages[i] for a malformed conversation.
    """
    context.check_model(request.model)
    tokenizer = context.tokenizer
    text = request.prompt
    if request.messages is not None:
        messages = message_dicts(request.messages)
        try:
            text = tokenizer.apply_chat_template(
                messages, add_generation_prompt=request.add_generation_prompt
            )
        except ValueError as error:
            raise bad_request(error) from None
    assert text is not None
    token_ids = tokenizer.encode(text, add_special_tokens=request.add_special_tokens)
    token_strs = tokenizer.convert_ids_to_tokens(token_ids) if request.return_token_strs else None
    return {
        "count": len(token_ids),
        "max_model_len": context.max_model_len,
        "tokens": token_ids,
        "token_strs": token_strs,
    }


def detokenize(context: ServingContext, request: DetokenizeRequest) -> dict[str, Any]:
    """Text of token ids (special tokens kept, so tokenize/detokenize round-trip).

    Raises:
        OpenAIError: 404 unknown model; 400 naming tokens for an id outside the vocabulary.
    """
    context.check_model(request.model)
    vocab_size = context.tokenizer.vocab_size
    for token_id in request.tokens:
        if not 0 <= token_id < vocab_size:
            raise OpenAIError(
                400, f"tokens: token id {token_id} is outside the vocabulary [0, {vocab_size})",
                param="tokens",
            )  # fmt: skip
    return {"prompt": context.tokenizer.decode(request.tokens, skip_special_tokens=False)}


def tokenizer_info(context: ServingContext) -> dict[str, Any]:
    """Special tokens, chat template and context length of the served model's tokenizer."""
    tokenizer = context.tokenizer

    def token(token_id: int | None) -> str | None:
        return tokenizer.convert_ids_to_tokens([token_id])[0] if token_id is not None else None

    return {
        "tokenizer_class": "kaon.tokenizer.Tokenizer",
        "bos_token": token(tokenizer.bos_token_id),
        "eos_token": token(tokenizer.eos_token_id),
        "pad_token": None,
        "add_bos_token": tokenizer.add_bos_token,
        "chat_template": tokenizer.chat_template,
        "model_max_length": context.max_model_len,
        "vocab_size": tokenizer.vocab_size,
    }
