"""The Hermes-style text format of a tool call, shared by rendering, grammar and parser.

A call is one JSON object between tags, each on its own line::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Several calls follow each other separated by a newline. The JSON uses ``json.dumps``'s default
separators (``", "`` and ``": "``), the same the grammar enforces.
"""

from __future__ import annotations

import json
from typing import Any

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
TOOL_RESPONSE_START = "<tool_response>"
TOOL_RESPONSE_END = "</tool_response>"
CALL_SEPARATOR = "\n"  # between two consecutive calls


def format_tool_call(name: str, arguments: Any) -> str:
    """One call in the generated-text format; ``arguments`` is the decoded JSON value."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_START}\n{body}\n{TOOL_CALL_END}"


def format_tool_response(content: str) -> str:
    """A tool's result as the generic rendering shows it to the model."""
    return f"{TOOL_RESPONSE_START}\n{content}\n{TOOL_RESPONSE_END}"
