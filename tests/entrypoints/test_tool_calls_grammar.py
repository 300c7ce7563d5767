"""The tool-call grammar compiles with llguidance and accepts exactly the calls it should.

Strings are checked with llguidance's own matcher over a byte-level tokenizer (one token per
byte, so any text can be fed): accepted = every token consumed and the matcher accepting.
"""

from __future__ import annotations

import json

import pytest

from kaon.entrypoints.openai.tool_calls.grammar import arguments_schema, tool_call_grammar
from kaon.entrypoints.openai.tool_calls.hermes import format_tool_call
from kaon.entrypoints.openai.tool_calls.parser import parse_tool_calls

llguidance = pytest.importorskip("llguidance")

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city"],
}
ORDER = {  # $ref / $defs must keep working when embedded in the grammar
    "type": "object",
    "$defs": {
        "item": {"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]}
    },  # fmt: skip
    "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1}},
    "required": ["items"],
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "place_order", "parameters": ORDER}},
    {"type": "function", "function": {"name": "now"}},  # no parameters
]
NAMES = {"get_weather", "place_order", "now"}


@pytest.fixture(scope="module")
def byte_tokenizer():
    """An llguidance tokenizer with one token per byte plus an end token."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab["<|end|>"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken("<|end|>", special=True)])
    return llguidance.LLTokenizer(tokenizer.to_str(), eos_token=vocab["<|end|>"])


def accepts(tokenizer, grammar: str, text: str) -> bool:
    assert llguidance.LLMatcher.validate_grammar(grammar, tokenizer) == ""
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    return matcher.consume_tokens(tokenizer.tokenize_str(text)) and matcher.is_accepting()


def call(name: str, arguments: dict) -> str:
    return format_tool_call(name, arguments)


GOOD_CALLS = [
    call("get_weather", {"city": "Paris"}),
    call("get_weather", {"city": "Oslo", "unit": "celsius", "days": 3}),
    call("place_order", {"items": [{"sku": "A1"}, {"sku": "B2"}]}),
    call("now", {}),
]
BAD_CALLS = [
    call("get_weather", {"unit": "celsius"}),  # required key missing
    call("get_weather", {"city": "Paris", "days": 9}),  # above maximum
    call("get_weather", {"city": "Paris", "unit": "kelvin"}),  # not in the enum
    call("get_weather", {"city": "Paris", "country": "FR"}),  # key not in properties
    call("place_order", {"items": []}),  # minItems
    call("place_order", {"items": [{"id": 1}]}),  # $ref'd object without its required key
    call("delete_all", {}),  # not a function in tools
    call("now", {"x": 1}),  # a function without parameters takes {}
    '<tool_call>\n{"name":"now","arguments":{}}\n</tool_call>',  # not the fixed separators
    "I would rather not.",  # text is not a call
]


@pytest.mark.parametrize("text", GOOD_CALLS)
def test_required_accepts_each_valid_call(byte_tokenizer, text: str) -> None:
    grammar = tool_call_grammar(TOOLS, "required", parallel_tool_calls=False)
    assert accepts(byte_tokenizer, grammar, text)
    parsed = parse_tool_calls(text, NAMES)  # and the parser reads back what the grammar allows
    assert parsed.content is None and len(parsed.tool_calls) == 1
    assert json.loads(text.split("\n")[1]) == {
        "name": parsed.tool_calls[0].name,
        "arguments": json.loads(parsed.tool_calls[0].arguments),
    }


@pytest.mark.parametrize("text", BAD_CALLS)
def test_required_rejects_invalid_calls(byte_tokenizer, text: str) -> None:
    grammar = tool_call_grammar(TOOLS, "required", parallel_tool_calls=True)
    assert not accepts(byte_tokenizer, grammar, text)


def test_parallel_tool_calls_allows_several_calls_only_when_true(byte_tokenizer) -> None:
    two = GOOD_CALLS[0] + "\n" + GOOD_CALLS[3]
    assert accepts(byte_tokenizer, tool_call_grammar(TOOLS, "required", True), two)
    assert not accepts(byte_tokenizer, tool_call_grammar(TOOLS, "required", False), two)
    assert not accepts(byte_tokenizer, tool_call_grammar(TOOLS, "required", True), "")


def test_named_tool_choice_allows_only_that_function(byte_tokenizer) -> None:
    named = {"type": "function", "function": {"name": "place_order"}}
    grammar = tool_call_grammar(TOOLS, named, parallel_tool_calls=True)
    assert accepts(byte_tokenizer, grammar, GOOD_CALLS[2])
    assert not accepts(byte_tokenizer, grammar, GOOD_CALLS[0])
    assert not accepts(byte_tokenizer, grammar, GOOD_CALLS[2] + "\n" + GOOD_CALLS[2])  # once
    assert "get_weather" not in grammar


def test_auto_allows_text_or_an_enforced_call(byte_tokenizer) -> None:
    grammar = tool_call_grammar(TOOLS, "auto", parallel_tool_calls=True)
    assert accepts(byte_tokenizer, grammar, "The weather is fine.\nNo call needed <tool")
    assert accepts(byte_tokenizer, grammar, "")
    assert accepts(byte_tokenizer, grammar, GOOD_CALLS[0])
    assert accepts(
        byte_tokenizer, grammar, "Let me check.\n" + GOOD_CALLS[0] + "\n" + GOOD_CALLS[2]
    )
    for bad in BAD_CALLS[:-1]:  # once <tool_call> is written, the call must be valid
        assert not accepts(byte_tokenizer, grammar, "Let me check. " + bad)
    single = tool_call_grammar(TOOLS, "auto", parallel_tool_calls=False)
    assert not accepts(byte_tokenizer, single, GOOD_CALLS[0] + "\n" + GOOD_CALLS[3])


def test_none_has_no_grammar() -> None:
    assert tool_call_grammar(TOOLS, "none", parallel_tool_calls=True) is None


def test_unknown_named_function_and_bad_schema_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"^tool_choice: function 'nope' is not in tools"):
        tool_call_grammar(TOOLS, {"type": "function", "function": {"name": "nope"}}, True)
    bad = [*TOOLS, {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "[a-"}}}}}]  # fmt: skip
    with pytest.raises(ValueError, match=r"^tools\[3\]\.function\.parameters: "):
        tool_call_grammar(bad, "required", True)
    unsatisfiable = {"type": "integer", "minimum": 5, "maximum": 1}
    bad = [{"type": "function", "function": {"name": "f", "parameters": unsatisfiable}}]
    with pytest.raises(ValueError, match=r"^tools\[0\]\.function\.parameters: "):
        tool_call_grammar(bad, "auto", True)


def test_arguments_schema_closes_objects_but_not_allof_or_declared_ones() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}},
        "anyOf": [{"properties": {"c": {}}}],
        "$defs": {"open": {"type": "object", "properties": {}, "additionalProperties": True}},
    }
    closed = arguments_schema(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["anyOf"][0]["additionalProperties"] is False
    assert closed["$defs"]["open"]["additionalProperties"] is True
    assert "additionalProperties" not in schema  # the client's schema is not modified
    merged = arguments_schema({"allOf": [{"properties": {"a": {}}}], "properties": {"b": {}}})
    assert "additionalProperties" not in merged and "additionalProperties" not in merged["allOf"][0]
    assert arguments_schema(None) == {
        "type": "object", "properties": {}, "additionalProperties": False,
        "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "},
    }  # fmt: skip
