"""Pydantic request models of the OpenAI-compatible API (OpenAI names, plus vLLM's extensions).

Every model forbids unknown fields and is strict (no "1" -> 1 coercion), so an unsupported or
mistyped parameter is a 400 naming it rather than being silently ignored; an explicit null is
"not set" (protocol_base.py). Union-typed fields
(prompt, stop, content) use plain validators so their errors name the field, not a union branch.
Responses are built as plain dicts in the serving modules, in OpenAI's shapes.

Spec: https://platform.openai.com/docs/api-reference (completions, chat), vLLM's protocol.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, model_validator

from kaon.entrypoints.openai.protocol_base import IgnoredFields, StrictModel, logger
from kaon.entrypoints.openai.structured_outputs import (
    ResponseFormat,
    StructuredOutputsRequest,
    structured_outputs_params,
)
from kaon.sampling_params import SamplingParams, StructuredOutputsParams

MAX_N = 128  # completions per prompt; bounds the work one request can ask for
MAX_PROMPTS = 1024  # prompts in one completions request
_SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_prompt(value: object) -> str | list[str] | list[int] | list[list[int]]:
    """A string, a list of strings, token ids, or a list of token-id lists (non-empty)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return value
        if all(_is_int(item) for item in value):
            return value
        if all(isinstance(item, list) and all(_is_int(i) for i in item) for item in value):
            return value
    if isinstance(value, list) and not value:
        raise ValueError("must not be empty")
    raise ValueError("must be a string, a list of strings, a list of token ids or a list of lists")


def _validate_stop(value: object) -> str | list[str] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise ValueError("must be a string or a list of strings")


PromptInput = Annotated[Any, PlainValidator(_validate_prompt)]
StopInput = Annotated[Any, PlainValidator(_validate_stop)]
Seed = Annotated[int, Field(ge=_SEED_RANGE[0], le=_SEED_RANGE[1])]


class StreamOptions(StrictModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM: usage in every chunk (with include_usage)


class SamplingRequest(IgnoredFields):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = None  # default: the model's generation_config, else 1
    top_p: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias in [-100, 100]
    seed: Seed | None = None
    stop: StopInput = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM extensions
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    structured_outputs: StructuredOutputsRequest | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingRequest:
        if self.stream_options is not None and not self.stream:  # OpenAI ignores it too
            logger.debug("ignoring stream_options: stream is false")
            self.stream_options = None
        return self

    def sampling_params(
        self,
        max_tokens: int | None,
        logprobs: int | None,
        prompt_logprobs: int | None,
        defaults: dict[str, Any],
    ) -> SamplingParams:
        """The engine's SamplingParams; unset fields take the model's generation defaults.

        Raises:
            ValueError: naming the out-of-range field (SamplingParams validation).
        """

        def pick(name: str, fallback: float) -> Any:
            value = getattr(self, name)
            return value if value is not None else defaults.get(name, fallback)

        return SamplingParams(
            n=self.n,
            temperature=pick("temperature", 1.0),
            top_p=pick("top_p", 1.0),
            top_k=pick("top_k", 0),
            min_p=pick("min_p", 0.0),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=pick("repetition_penalty", 1.0),
            seed=self.seed,
            logit_bias=dict(self.logit_bias) if self.logit_bias is not None else None,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos,
            include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            structured_outputs=self.structured_outputs_params(),
            output_kind_delta=True,
        )

    def structured_outputs_params(self) -> StructuredOutputsParams | None:
        """The output constraint (``response_format`` on chat, ``structured_outputs``), checked.

        Raises:
            ValueError: naming the field when the constraint is malformed or does not compile.
        """
        return structured_outputs_params(None, self.structured_outputs)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def include_continuous_usage(self) -> bool:
        """vLLM's ``continuous_usage_stats``: every chunk carries usage (needs include_usage)."""
        return self.include_usage and self.stream_options.continuous_usage_stats  # type: ignore[union-attr]


class CompletionRequest(SamplingRequest):
    """POST /v1/completions."""

    prompt: PromptInput
    max_tokens: int | None = 16  # OpenAI's default; null = the rest of the context; 0 = score
    # the prompt (prompt_scoring.py)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = None  # only best_of == n is supported
    suffix: str | None = None  # not supported
    prompt_logprobs: int | None = Field(None, ge=0, le=20)  # vLLM extension

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        if self.suffix is not None:
            raise ValueError("suffix: not supported by kaon (no fill-in-the-middle)")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of: only best_of == n is supported")
        many = isinstance(self.prompt, list) and not isinstance(self.prompt[0], int)
        if many and len(self.prompt) > MAX_PROMPTS:
            raise ValueError(f"prompt: at most {MAX_PROMPTS} prompts per request")
        return self


def _validate_content(value: object) -> str | list[dict[str, str]] | None:
    """None, a string, or a list of {"type": "text", "text": str} parts."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError("must be a string or a list of text parts")
    for index, part in enumerate(value):
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ValueError(f"part {index}: unsupported content part type {kind!r}, only 'text'")
        if set(part) != {"type", "text"} or not isinstance(part["text"], str):
            raise ValueError(f"part {index}: a text part is {{'type': 'text', 'text': string}}")
    return value


class FunctionDefinition(StrictModel):
    """A function the model may call: ``parameters`` is a JSON schema of its arguments object
    (omitted = no arguments). ``strict`` is accepted; kaon always enforces the schema."""

    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatCompletionTool(StrictModel):
    type: Literal["function"]
    function: FunctionDefinition


def _validate_tool_choice(value: object) -> str | dict[str, Any] | None:
    """ "none" | "auto" | "required" | {"type": "function", "function": {"name": str}}."""
    if value is None or value in ("none", "auto", "required"):
        return value
    function = value.get("function") if isinstance(value, dict) else None
    named = isinstance(value, dict) and value.get("type") == "function" and len(value) == 2
    name = function.get("name") if isinstance(function, dict) and len(function) == 1 else None
    if named and isinstance(name, str) and name:
        return value
    raise ValueError(
        'must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}'
    )


class FunctionCall(StrictModel):
    name: str
    arguments: str | dict[str, Any]  # a JSON object as a string (OpenAI); a dict is accepted


class ToolCallItem(StrictModel):
    """An assistant message's past call (OpenAI's ``tool_calls`` item)."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[Any, PlainValidator(_validate_content)] = None
    name: str | None = None
    tool_calls: list[ToolCallItem] | None = None  # assistant messages only
    tool_call_id: str | None = None  # tool messages: the call this result answers

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("tool_calls: only assistant messages carry tool_calls")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("tool_call_id: required in a tool message")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("tool_call_id: only tool messages carry tool_call_id")
        return self


class ChatCompletionRequest(SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None  # deprecated by OpenAI in favour of max_completion_tokens
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    add_generation_prompt: bool = True  # vLLM extension
    response_format: ResponseFormat | None = None
    tools: list[ChatCompletionTool] | None = Field(None, min_length=1)
    tool_choice: Annotated[Any, PlainValidator(_validate_tool_choice)] = None  # default "auto"
    parallel_tool_calls: bool | None = None  # default true; ignored without tools

    @model_validator(mode="after")
    def _tool_choice(self) -> ChatCompletionRequest:
        choice = self.tool_choice
        if choice not in (None, "none") and self.tools is None:
            raise ValueError("tool_choice: only allowed when tools are given")
        if isinstance(choice, dict):
            name = choice["function"]["name"]
            if name not in {tool.function.name for tool in self.tools or []}:
                raise ValueError(f"tool_choice: function {name!r} is not in tools")
        return self

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_completion_tokens: conflicts with max_tokens; send one")
        return self

    def structured_outputs_params(self) -> StructuredOutputsParams | None:
        return structured_outputs_params(self.response_format, self.structured_outputs)

    @property
    def requested_max_tokens(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )

    @property
    def num_logprobs(self) -> int | None:
        """The engine's ``logprobs``: top alternatives per token, None when not asked."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def message_dicts(self) -> list[dict[str, Any]]:
        return message_dicts(self.messages)

    @property
    def tool_dicts(self) -> list[dict[str, Any]]:
        """``tools`` as OpenAI tool dicts (unset fields left out); [] without tools."""
        return [tool.model_dump(exclude_none=True) for tool in self.tools or []]

    @property
    def effective_tool_choice(self) -> str | dict[str, Any]:
        """``tool_choice`` with OpenAI's defaults: "auto" with tools, "none" without."""
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages for the chat template ('developer' is OpenAI's new name for 'system')."""
    result = []
    for message in messages:
        data = message.model_dump(exclude_none=True)
        data.setdefault("content", None)
        if data["role"] == "developer":
            data["role"] = "system"
        result.append(data)
    return result


class TokenizeRequest(StrictModel):
    """POST /tokenize (vLLM's shape): either ``prompt`` or ``messages``."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("prompt: send exactly one of prompt or messages")
        return self


class DetokenizeRequest(StrictModel):
    """POST /detokenize (vLLM's shape)."""

    model: str | None = None
    tokens: list[int]
