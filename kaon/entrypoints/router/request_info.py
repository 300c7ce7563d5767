"""What the router needs to know about a generation request before choosing a replica.

The front validates the body with the same pydantic models as a replica (so bad input gets the
same 400 envelope without a round trip), renders the chat template and tokenizes with the same
``Tokenizer`` (built from the GGUF / Hugging Face metadata; no weights are loaded), then derives:

    prefix_hashes   chained hashes of the first full KV cache blocks of the (first) prompt
    num_tokens      outstanding-token cost: sum over prompts of prompt + n * max_tokens
"""

from __future__ import annotations

from dataclasses import dataclass

from kaon.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest, message_dicts
from kaon.entrypoints.openai.protocol_responses import ResponsesRequest
from kaon.entrypoints.openai.serving_common import OpenAIError, bad_request, parse_body
from kaon.entrypoints.router.policy import block_prefix_hashes


@dataclass
class RoutingInfo:
    """The routing key and the load of one generation request."""

    prefix_hashes: list[int]
    num_tokens: int  # outstanding tokens charged to the replica: prompt + n * max_tokens
    stream: bool


class RequestInspector:
    """Turns completion / chat bodies into RoutingInfo.

    Args:
        tokenizer: a ``kaon.tokenizer.Tokenizer`` (encode, apply_chat_template).
        block_size: the replicas' KV cache block size in tokens (prefix cache granularity).
        max_model_len: the replicas' context length in tokens; the generation budget of a
            request without max_tokens is the rest of the context.
    """

    def __init__(self, tokenizer, block_size: int, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.max_model_len = max_model_len

    def completion(self, body: bytes) -> RoutingInfo:
        """Raises OpenAIError 400 naming the bad field (the same envelope a replica sends)."""
        request = parse_body(CompletionRequest, body)
        prompt = request.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        prompts = [
            self.tokenizer.encode(item) if isinstance(item, str) else list(item) for item in prompt
        ]
        return self._info(prompts, request.max_tokens, request.n, bool(request.stream))

    def chat(self, body: bytes) -> RoutingInfo:
        """Raises OpenAIError 400 naming the bad field (e.g. messages[0].role)."""
        request = parse_body(ChatCompletionRequest, body)
        try:
            text = self.tokenizer.apply_chat_template(
                request.message_dicts(), add_generation_prompt=request.add_generation_prompt
            )
        except ValueError as error:
            raise bad_request(error) from None
        token_ids = self.tokenizer.encode(text)
        max_tokens = request.requested_max_tokens
        return self._info([token_ids], max_tokens, request.n, bool(request.stream))

    def responses(self, body: bytes) -> RoutingInfo:
        """/v1/responses. Raises OpenAIError 400 naming the bad field (e.g. input[0].role)."""
        request = parse_body(ResponsesRequest, body)
        try:
            text = self.tokenizer.apply_chat_template(
                message_dicts(request.chat_messages()), add_generation_prompt=True
            )
        except ValueError as error:
            raise bad_request(error) from None
        token_ids = self.tokenizer.encode(text)
        return self._info([token_ids], request.max_output_tokens, 1, request.stream)

    def _info(
        self, prompts: list[list[int]], max_tokens: int | None, n: int, stream: bool
    ) -> RoutingInfo:
        if not prompts or not prompts[0]:
            raise OpenAIError(400, "prompt: must not be empty", param="prompt")
        num_tokens = 0
        for token_ids in prompts:
            budget = max_tokens if max_tokens is not None else self.max_model_len - len(token_ids)
            num_tokens += len(token_ids) + n * max(budget, 0)
        hashes = block_prefix_hashes(prompts[0], self.block_size)
        return RoutingInfo(hashes, num_tokens, stream)
