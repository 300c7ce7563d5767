"""Tools and tool messages rendered through a template that takes ``tools`` or, for one that
does not (ChatML as in the default SmolLM2), through the generic Hermes-style rendering."""

from __future__ import annotations

import json

import pytest

from kaon.chat_template import render_chat_template, template_variables
from kaon.entrypoints.openai.tool_calls.rendering import render_inputs, tool_instructions

CHATML = (  # the default model's template: no tools variable, any role name rendered as is
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WITH_TOOLS = (  # a template that renders tools and tool calls itself (arguments as a dict)
    "{% if tools %}TOOLS {{ tools | tojson }}\n{% endif %}{% for m in messages %}"
    "{{ m.role }}: {{ m.content or '' }}{% for c in m.tool_calls or [] %}"
    "[call {{ c.function.name }} {{ c.function.arguments.city }}]{% endfor %}{{ '\n' }}{% endfor %}"
)
CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "W.", "parameters": CITY},
    }
]
ROUND_TRIP = [
    {"role": "user", "content": "Weather in Paris and Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "9 C"}]},
]  # fmt: skip


def render(template: str, messages: list, tools: list | None) -> str:
    rendered, variables = render_inputs(messages, tools, template)
    return render_chat_template(template, rendered, add_generation_prompt=True, **variables)


def test_generic_rendering_of_a_whole_round_trip() -> None:
    assert "tools" not in template_variables(CHATML)
    text = render(CHATML, ROUND_TRIP, TOOLS)
    call_1 = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    call_2 = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    assert text == (
        f"<|im_start|>system\n{tool_instructions(TOOLS)}<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris and Oslo?<|im_end|>\n"
        f"<|im_start|>assistant\n<tool_call>\n{call_1}\n</tool_call>\n"
        f"<tool_call>\n{call_2}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>\n"
        "<tool_response>\n9 C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert json.dumps(TOOLS[0]) in tool_instructions(TOOLS)


def test_generic_rendering_joins_an_existing_system_prompt_and_keeps_assistant_text() -> None:
    messages = [{"role": "system", "content": "Be brief."}, ROUND_TRIP[0],
                {**ROUND_TRIP[1], "content": "Checking."}]  # fmt: skip
    rendered, variables = render_inputs(messages, TOOLS, CHATML)
    assert variables == {}
    assert rendered[0] == {"role": "system", "content": "Be brief.\n\n" + tool_instructions(TOOLS)}
    assert rendered[2]["content"].startswith("Checking.\n<tool_call>\n")
    assert "tool_calls" not in rendered[2]


def test_no_tools_shown_without_tools_but_history_still_rendered() -> None:
    rendered, _ = render_inputs(ROUND_TRIP, None, CHATML)
    assert [m["role"] for m in rendered] == ["user", "assistant", "user"]
    assert "<tools>" not in render(CHATML, ROUND_TRIP, None)


def test_template_with_tools_variable_gets_tools_and_dict_arguments() -> None:
    text = render(WITH_TOOLS, ROUND_TRIP, TOOLS)
    assert text.startswith("TOOLS " + json.dumps(TOOLS) + "\n")
    assert "assistant: [call get_weather Paris][call get_weather Oslo]\n" in text
    assert "tool: 18 C\n" in text and "<tool_call>" not in text


def test_arguments_that_are_not_a_json_object_name_the_field() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1, 2"}}
    bad = [ROUND_TRIP[0], {"role": "assistant", "content": None, "tool_calls": [call]}]
    with pytest.raises(ValueError, match=r"^messages\[1\]\.tool_calls\[0\]\.function\.arguments"):
        render_inputs(bad, TOOLS, CHATML)
