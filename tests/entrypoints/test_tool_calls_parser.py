"""Generated text -> content + tool calls, whole and streamed in every possible split."""

from __future__ import annotations

import json

import pytest

from kaon.entrypoints.openai.tool_calls.parser import ToolCallStreamParser, parse_tool_calls

NAMES = {"get_weather", "now"}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
NOW = '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'


def summary(content, calls) -> tuple:
    return content, [(call.name, json.loads(call.arguments)) for call in calls]


CASES = [
    ("Hello there!", ("Hello there!", [])),
    ("Hi <tool> and a < sign  \n", ("Hi <tool> and a < sign  \n", [])),
    (CALL, (None, [("get_weather", {"city": "Paris"})])),
    (
        f"Let me check.\n{CALL}\n{NOW}\n",
        ("Let me check.", [("get_weather", {"city": "Paris"}), ("now", {})]),
    ),  # fmt: skip
    # a call cut before its end tag (EOS right after the JSON) still counts
    (CALL.removesuffix("</tool_call>"), (None, [("get_weather", {"city": "Paris"})])),
    # Llama-style "parameters" and compact JSON are read too
    ('<tool_call>{"name":"now","parameters":{"a":1}}</tool_call>', (None, [("now", {"a": 1})])),
    # not a function in tools, or not JSON: kept as content, tags and all
    (
        '<tool_call>\n{"name": "rm", "arguments": {}}\n</tool_call>',
        ('<tool_call>\n{"name": "rm", "arguments": {}}\n</tool_call>', []),
    ),  # fmt: skip
    ("<tool_call>\nnot json\n</tool_call>", ("<tool_call>\nnot json\n</tool_call>", [])),
    ('<tool_call>{"name": "now", "argu', ('<tool_call>{"name": "now", "argu', [])),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_parse_whole_output(text: str, expected: tuple) -> None:
    parsed = parse_tool_calls(text, NAMES)
    assert summary(parsed.content, parsed.tool_calls) == expected
    assert parsed.truncated_call == text.endswith('"argu')
    for call in parsed.tool_calls:
        assert call.id.startswith("call_") and len(call.id) == 29


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_streaming_agrees_with_whole_output_for_every_split(text: str, expected: tuple) -> None:
    for split in range(len(text) + 1):  # two deltas, split at every character
        parser = ToolCallStreamParser(NAMES)
        contents, calls = [], []
        for piece in (text[:split], text[split:]):
            content, new_calls = parser.feed(piece)
            contents.append(content)
            calls += new_calls
        content, new_calls = parser.finish()
        contents.append(content)
        calls += new_calls
        assert summary("".join(contents) or None, calls) == expected, split


def test_streaming_sends_content_before_the_call_is_complete() -> None:
    parser = ToolCallStreamParser(NAMES)
    assert parser.feed("Sure, one moment. <tool") == ("Sure, one moment.", [])
    assert parser.feed('_call>\n{"name": "now", "arguments": {}}') == ("", [])
    content, calls = parser.feed("\n</tool_call>")
    assert content == "" and [c.name for c in calls] == ["now"]
    assert parser.finish() == ("", [])


def test_openai_shapes() -> None:
    call = parse_tool_calls(CALL, NAMES).tool_calls[0]
    assert call.to_openai() == {"id": call.id, "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    assert call.to_openai(index=2)["index"] == 2
