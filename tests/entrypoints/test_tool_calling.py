"""Tool calling through the real openai client over HTTP: enforced calls validate against their
function's schema (greedy and sampled, streamed and not), a named function, a whole round trip,
and 400s naming the field for bad tools while the server keeps serving."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from tests.entrypoints.utils import MODEL_NAME

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
}
ORDER = {
    "type": "object",
    "$defs": {
        "item": {
            "type": "object",
            "properties": {
                "sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
                "quantity": {"type": "integer", "minimum": 1, "maximum": 9},
            },
            "required": ["sku", "quantity"],
        }
    },
    "properties": {
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1, "maxItems": 2},
        "express": {"type": "boolean"},
    },
    "required": ["items", "express"],
}
CONVERT = {
    "type": "object",
    "properties": {
        "amount": {"type": "integer", "minimum": 0, "maximum": 10000},
        "currency": {
            "anyOf": [{"enum": ["EUR", "USD"]}, {"type": "string", "pattern": "^[A-Z]{3}$"}]
        },
    },
    "required": ["amount", "currency"],
}
SCHEMAS = {"get_weather": WEATHER, "place_order": ORDER, "convert": CONVERT, "now": None}
TOOLS = [
    {"type": "function", "function": {"name": name, "description": f"The {name} function.",
                                      **({"parameters": schema} if schema else {})}}
    for name, schema in SCHEMAS.items()
]  # fmt: skip
MESSAGES = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
MAX_TOKENS = 100


def check_calls(message, names: set[str], max_calls: int | None = None) -> list[tuple]:
    """Every call names a function in ``names`` and its arguments validate; returns
    [(name, arguments)]."""
    assert message.tool_calls, message
    assert max_calls is None or len(message.tool_calls) <= max_calls
    calls = []
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        arguments = json.loads(call.function.arguments)
        schema = SCHEMAS[call.function.name] or {"type": "object", "maxProperties": 0}
        jsonschema.validate(arguments, schema)
        calls.append((call.function.name, arguments))
    return calls


def create(client: openai.OpenAI, **options):
    options = {"model": MODEL_NAME, "messages": MESSAGES, "tools": TOOLS,
               "max_tokens": MAX_TOKENS, **options}  # fmt: skip
    return client.chat.completions.create(**options)


def streamed_choices(client: openai.OpenAI, **options) -> list:
    """The choices of a streamed reply, assembled by the openai client's own stream state."""
    state = ChatCompletionStreamState()
    for chunk in create(client, stream=True, **options):
        state.handle_chunk(chunk)
    return state.current_completion_snapshot.choices


ONE_CALL = {"tool_choice": "required", "parallel_tool_calls": False}


def test_required_greedy_streamed_and_not(client: openai.OpenAI) -> None:
    full = create(client, temperature=0, **ONE_CALL).choices[0]
    assert full.finish_reason == "tool_calls" and full.message.content is None
    calls = check_calls(full.message, set(SCHEMAS), max_calls=1)
    chunks = list(create(client, temperature=0, stream=True, **ONE_CALL))
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    streamed = state.current_completion_snapshot.choices[0]
    assert check_calls(streamed.message, set(SCHEMAS)) == calls
    assert streamed.finish_reason == "tool_calls" and not streamed.message.content
    # OpenAI's delta shape: index, id, type, name and the arguments in one delta
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    assert len(deltas) == 1 and deltas[0].index == 0 and deltas[0].type == "function"
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == calls[0][0]
    assert json.loads(deltas[0].function.arguments) == calls[0][1]


def test_required_sampled_always_yields_one_valid_call(client: openai.OpenAI) -> None:
    for choice in streamed_choices(client, temperature=1.0, n=2, seed=1, **ONE_CALL):
        assert choice.finish_reason == "tool_calls" and not choice.message.content
        assert len(check_calls(choice.message, set(SCHEMAS), max_calls=1)) == 1


def test_required_with_parallel_calls_yields_valid_calls(client: openai.OpenAI) -> None:
    """Several calls may follow each other; a small model may keep calling until max_tokens,
    then the complete calls are still returned (finish_reason "length")."""
    choice = create(client, tool_choice="required", temperature=1.0, seed=3).choices[0]
    check_calls(choice.message, set(SCHEMAS))
    assert choice.finish_reason in ("tool_calls", "length")
    assert choice.finish_reason == "length" or choice.message.content is None


def test_named_function_is_the_one_called(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "place_order"}}
    choice = create(client, tool_choice=named, temperature=1.0, seed=4).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [name for name, _ in check_calls(choice.message, {"place_order"})] == ["place_order"]


def test_two_step_round_trip(client: openai.OpenAI) -> None:
    weather = [TOOLS[0]]
    first = create(client, tools=weather, temperature=0, **ONE_CALL).choices[0]
    [(name, arguments)] = check_calls(first.message, {"get_weather"})
    messages = [
        *MESSAGES,
        first.message,  # the client sends the assistant message back as it came
        {"role": "tool", "tool_call_id": first.message.tool_calls[0].id,
         "content": json.dumps({"city": arguments["city"], "temperature": 18, "sky": "sunny"})},
    ]  # fmt: skip
    final = create(
        client, messages=messages, tools=weather, tool_choice="none", temperature=0, max_tokens=40
    )
    answer = final.choices[0]
    assert answer.message.tool_calls is None and answer.message.content
    assert "<tool_call>" not in answer.message.content


def test_auto_streamed_equals_non_streamed(client: openai.OpenAI) -> None:
    full = create(client, tool_choice="auto", temperature=0, max_tokens=24).choices[0]
    streamed = streamed_choices(client, tool_choice="auto", temperature=0, max_tokens=24)[0]
    assert streamed.message.content == full.message.content
    assert streamed.finish_reason == full.finish_reason
    assert [c.function.arguments for c in streamed.message.tool_calls or []] == [
        c.function.arguments for c in full.message.tool_calls or []
    ]


BAD_REQUESTS = [
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]},
     "tools[0].function.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "[a-"}}}}}]},
     "tools[0].function.parameters"),
    ({"messages": [*MESSAGES, {"role": "tool", "content": "18 C"}]}, "messages[1]"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "param"), BAD_REQUESTS)
def test_bad_tool_input_is_a_400_naming_the_field(
    http: httpx.Client, fields: dict, param: str
) -> None:
    body = {"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 2, **fields}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    ok = http.post("/v1/chat/completions", json={**body, **{"messages": MESSAGES}} | {
        "tools": TOOLS, "tool_choice": "none"})  # fmt: skip
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
