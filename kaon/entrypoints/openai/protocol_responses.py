"""Request model of POST /v1/responses (OpenAI's Responses API), text in and text out.

Supported: ``input`` as a string or a list of input messages (role user / system / developer /
assistant; content a string or ``input_text`` parts, ``output_text`` parts for assistant
messages passed back from an earlier response), ``instructions``, ``max_output_tokens``,
``temperature``, ``top_p``, ``stream``. Accepted because they change nothing here: the
bookkeeping fields of IgnoredFields (``store``: nothing is stored), ``stream_options``,
``parallel_tool_calls``, ``max_tool_calls``, ``tools: []``, ``tool_choice`` "auto" / "none",
``text.format`` {"type": "text"}, ``truncation`` "disabled", ``background`` false,
``include: []``. Anything else that would change the output (``previous_response_id``, tools,
other text formats, ``reasoning``, ``top_logprobs``, ...) is a 400 naming the field.

Spec: https://platform.openai.com/docs/api-reference/responses/create and openai-python's
``openai/types/responses/response_create_params.py``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, field_validator, model_validator

from kaon.entrypoints.openai.protocol import ChatMessage
from kaon.entrypoints.openai.protocol_base import IgnoredFields, StrictModel

_PART_KEYS = {
    "input_text": {"type", "text"},
    "output_text": {"type", "text", "annotations", "logprobs"},
}


def _validate_content(value: object) -> str | list[dict[str, Any]]:
    """A string, or a list of {"type": "input_text" | "output_text", "text": str} parts."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError("must be a string or a list of input_text parts")
    for index, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind not in _PART_KEYS:
            raise ValueError(
                f"part {index}: unsupported content part type {kind!r}, only 'input_text' "
                "(and 'output_text' in assistant messages)"
            )
        if not set(part) <= _PART_KEYS[kind] or not isinstance(part.get("text"), str):
            raise ValueError(f"part {index}: a text part is {{'type': {kind!r}, 'text': string}}")
    return value


class InputMessage(StrictModel):
    """One item of ``input``: a message (``id`` / ``status`` of a passed-back item are ignored)."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Annotated[Any, PlainValidator(_validate_content)]
    id: str | None = None
    status: str | None = None
    phase: str | None = None

    def chat_message(self) -> ChatMessage:
        content = self.content
        if isinstance(content, list):
            content = [{"type": "text", "text": part["text"]} for part in content]
        return ChatMessage(role=self.role, content=content)


class TextFormat(StrictModel):
    type: Literal["text"] = "text"  # json_schema / json_object: not supported


class TextConfig(StrictModel):
    format: TextFormat = Field(default_factory=TextFormat)


class ResponsesStreamOptions(StrictModel):
    include_obfuscation: bool = True  # padding on delta events; kaon sends none


class ResponsesRequest(IgnoredFields):
    """POST /v1/responses."""

    model: str | None = None
    input: list[InputMessage]  # a string is one user message
    instructions: str | None = None
    max_output_tokens: int | None = None  # None: the rest of the context
    temperature: float | None = None  # default: the model's generation_config, else 1
    top_p: float | None = None
    stream: bool = False
    stream_options: ResponsesStreamOptions | None = None
    previous_response_id: str | None = None  # not supported: nothing is stored
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = None
    text: TextConfig | None = None
    truncation: Literal["disabled", "auto"] | None = None
    background: bool | None = None
    include: list[str] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _string_input(cls, value: Any) -> Any:
        return [{"role": "user", "content": value}] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _unsupported(self) -> ResponsesRequest:
        if self.previous_response_id is not None:
            raise ValueError(
                "previous_response_id: not supported (kaon stores no responses); send the "
                "conversation in input"
            )
        if self.tools:
            raise ValueError("tools: not supported by kaon's Responses API")
        if self.tool_choice is not None and self.tool_choice not in ("auto", "none"):
            raise ValueError("tool_choice: only 'auto' or 'none' (there are no tools)")
        if self.truncation == "auto":
            raise ValueError("truncation: only 'disabled' is supported")
        if self.background:
            raise ValueError("background: not supported (responses are not stored)")
        if self.include:
            raise ValueError(f"include: {self.include[0]!r} is not supported")
        if not self.input:
            raise ValueError("input: must not be empty")
        return self

    def chat_messages(self) -> list[ChatMessage]:
        """``instructions`` as a leading system message, then the input as chat messages."""
        system = (
            [ChatMessage(role="system", content=self.instructions)] if self.instructions else []
        )
        return [*system, *(item.chat_message() for item in self.input)]
