"""Chat messages with tools -> what the chat template renders.

Two paths (docs/tool_calling.md):

* the model's template takes a ``tools`` variable (Qwen2.5, Hermes, Llama 3.1, ...): tools go
  through it, and assistant ``tool_calls`` carry ``function.arguments`` as a dict, as
  transformers' templates expect;
* otherwise (the default SmolLM2's ChatML, for one) the generic rendering: a system-prompt block
  lists the functions as JSON and asks for Hermes-style ``<tool_call>`` blocks; assistant calls
  are written into the assistant text in that format, and tool results become user messages
  wrapped in ``<tool_response>`` tags (consecutive results share one message), since a template
  without tool support may not accept a ``tool`` role.
"""

from __future__ import annotations

import json
from typing import Any

from kaon.chat_template import template_variables
from kaon.entrypoints.openai.tool_calls.hermes import format_tool_call, format_tool_response

_INSTRUCTIONS = """\
# Tools

You can call the functions listed below to help answer the user. Their signatures, as JSON \
schemas, are between <tools> and </tools>:
<tools>
{tools}
</tools>

To call a function, reply with a JSON object holding its name and arguments between \
<tool_call> and </tool_call> tags, one call per block:
<tool_call>
{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}
</tool_call>
The results come back between <tool_response> and </tool_response> tags."""


def render_inputs(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, template: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Messages and extra template variables for ``template``.

    ``messages`` are OpenAI message dicts (``tool_calls`` with JSON-string arguments, ``tool``
    role messages); ``tools`` are OpenAI tool dicts, None when they must not be shown
    (no tools, or ``tool_choice: "none"``).

    Raises:
        ValueError: naming ``messages[i].tool_calls[j].function.arguments`` when it is not a
            JSON object.
    """
    messages = [_decode_arguments(message, i) for i, message in enumerate(messages)]
    if "tools" in template_variables(template):
        return messages, ({"tools": tools} if tools else {})
    rendered = _generic_messages(messages)
    if tools:
        rendered = _with_tool_instructions(rendered, tools)
    return rendered, {}


def tool_instructions(tools: list[dict[str, Any]]) -> str:
    """The generic system-prompt block that lists ``tools`` and the call format."""
    lines = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return _INSTRUCTIONS.format(tools=lines)


def _decode_arguments(message: dict[str, Any], index: int) -> dict[str, Any]:
    """A copy of ``message`` whose tool calls carry ``function.arguments`` as a dict."""
    if not message.get("tool_calls"):
        return message
    calls = []
    for j, call in enumerate(message["tool_calls"]):
        function = dict(call["function"])
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                arguments = None
        if not isinstance(arguments, dict):
            field = f"messages[{index}].tool_calls[{j}].function.arguments"
            raise ValueError(f"{field}: must be a JSON object (as a string)")
        calls.append({**call, "function": {**function, "arguments": arguments}})
    return {**message, "tool_calls": calls}


def _generic_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls written into assistant text; tool results merged into user messages."""
    result: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role == "tool":
            response = format_tool_response(_text(message.get("content")))
            previous = result[-1] if result else None
            if previous is not None and previous.get("_tool_results"):
                previous["content"] += "\n" + response
            else:
                result.append({"role": "user", "content": response, "_tool_results": True})
        elif role == "assistant" and message.get("tool_calls"):
            blocks = [format_tool_call(c["function"]["name"], c["function"]["arguments"])
                      for c in message["tool_calls"]]  # fmt: skip
            text = _text(message.get("content"))
            content = "\n".join([text, *blocks] if text else blocks)
            rest = {k: v for k, v in message.items() if k not in ("tool_calls", "content")}
            result.append({**rest, "content": content})
        else:
            result.append(message)
    return [{k: v for k, v in m.items() if k != "_tool_results"} for m in result]


def _with_tool_instructions(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The tool block appended to the first system message, or as a new first message."""
    block = tool_instructions(tools)
    if messages and messages[0]["role"] == "system":
        text = _text(messages[0].get("content"))
        return [{**messages[0], "content": f"{text}\n\n{block}" if text else block}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def _text(content: Any) -> str:
    """A message's text: a string, text parts joined by newlines, or "" for None."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "\n".join(part["text"] for part in content)
    return content
