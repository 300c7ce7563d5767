"""Request fields that constrain the output: OpenAI's ``response_format`` (chat) and vLLM's
``structured_outputs`` (completions and chat) -> ``StructuredOutputsParams``.

    response_format: {"type": "text"}                       no constraint (the default)
                     {"type": "json_object"}                any JSON object
                     {"type": "json_schema", "json_schema": {"name", "schema", "strict",
                                                            "description"}}
    structured_outputs: {"json" | "regex" | "choice" | "grammar" | "json_object"}   (exactly one)

The constraint is compiled (validated) here, so a bad schema or regex is a 400 naming the field
the client sent (``response_format.json_schema.schema``, ``structured_outputs.regex``).
Spec: https://platform.openai.com/docs/api-reference/chat/create#chat-create-response_format and
vLLM's StructuredOutputsParams.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kaon.sampling_params import StructuredOutputsParams
from kaon.structured_outputs import grammar_from_params


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class JsonSchemaFormat(_Strict):
    """``response_format.json_schema``; ``strict`` and ``description`` change nothing here (the
    schema is always enforced)."""

    name: str | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required when type is 'json_schema'")
        return self


class StructuredOutputsRequest(_Strict):
    """vLLM's ``structured_outputs`` request field."""

    json_: dict[str, Any] | bool | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


def structured_outputs_params(
    response_format: ResponseFormat | None, structured_outputs: StructuredOutputsRequest | None
) -> StructuredOutputsParams | None:
    """The engine's constraint for a request, compiled once to check it.

    Raises:
        ValueError: naming the request field (``response_format...`` or ``structured_outputs...``)
            when both are sent, none or several kinds are set, or the constraint does not compile.
    """
    from_format = _from_response_format(response_format)
    if from_format is not None and structured_outputs is not None:
        raise ValueError("response_format: conflicts with structured_outputs; send one")
    if from_format is not None:
        try:
            grammar_from_params(from_format)
        except ValueError as error:
            field = "json_schema.schema" if response_format.type == "json_schema" else "type"
            message = str(error).split(": ", 1)[-1]
            raise ValueError(f"response_format.{field}: {message}") from None
        return from_format
    if structured_outputs is None:
        return None
    data = structured_outputs.model_dump(by_alias=True, exclude_none=True)
    if data.get("json_object") is False:
        del data["json_object"]
    params = StructuredOutputsParams(**data)
    grammar_from_params(params)  # its errors already name structured_outputs.<field>
    return params


def _from_response_format(response_format: ResponseFormat | None) -> StructuredOutputsParams | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    assert response_format.json_schema is not None
    schema = response_format.json_schema.schema_
    if schema is None:  # a json_schema format without a schema: any JSON object
        return StructuredOutputsParams(json_object=True)
    if schema is False:  # JSON Schema's `false` accepts no instance
        raise ValueError("response_format.json_schema.schema: the schema false matches no value")
    return StructuredOutputsParams(json=schema)
