"""Generated text -> content and tool calls (Hermes format, see hermes.py), whole or streamed.

``ToolCallStreamParser`` reads the text delta by delta and emits content as soon as it cannot be
the start of a ``<tool_call>`` tag, and each call once its closing tag (or the end of the output)
arrives. ``parse_tool_calls`` runs the same parser over a whole output, so a streamed reply and a
non-streamed one always agree.

A block that is not a JSON object ``{"name": <a function in tools>, "arguments": {...}}`` is
given back as plain content, tags included (vLLM does the same), so nothing the model wrote is
lost when it does not follow the format.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from kaon.entrypoints.openai.tool_calls.hermes import TOOL_CALL_END, TOOL_CALL_START


@dataclass
class ToolCall:
    """One parsed call; ``arguments`` is a JSON string (OpenAI's ``function.arguments``)."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: new_tool_call_id())

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        """OpenAI's ``tool_calls`` item; with ``index`` the streaming delta shape."""
        call = {"id": self.id, "type": "function"}
        call["function"] = {"name": self.name, "arguments": self.arguments}
        return call if index is None else {"index": index, **call}


@dataclass
class ParsedOutput:
    """A whole output split into ``content`` (None when empty) and ``tool_calls``."""

    content: str | None
    tool_calls: list[ToolCall]
    # True when the text ends inside an unfinished call (cut by max_tokens): it became content.
    truncated_call: bool = False


def new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallStreamParser:
    """Incremental parser of one choice's text.

    ``feed(delta)`` and ``finish()`` return ``(content, calls)``: the content that is safe to
    send now ("" if none) and the calls completed by this delta. Whitespace right before a
    call, between calls and at the end of the output is dropped.
    """

    def __init__(self, tool_names: set[str]) -> None:
        self.tool_names = tool_names
        self.num_calls = 0
        self.truncated_call = False
        self._buffer = ""  # text not yet emitted
        self._inside = False  # after a <tool_call> tag whose end tag has not arrived

    def feed(self, delta: str) -> tuple[str, list[ToolCall]]:
        self._buffer += delta
        content, calls = [], []
        while True:
            if self._inside:
                end = self._buffer.find(TOOL_CALL_END)
                if end < 0:
                    break
                body, self._buffer = self._buffer[:end], self._buffer[end + len(TOOL_CALL_END) :]
                self._inside = False
                self._close(body, TOOL_CALL_END, content, calls)
                continue
            start = self._buffer.find(TOOL_CALL_START)
            if start < 0:
                keep = _held_back(self._buffer)
                content.append(self._buffer[: len(self._buffer) - keep])
                self._buffer = self._buffer[len(self._buffer) - keep :]
                break
            content.append(self._buffer[:start].rstrip())
            self._buffer = self._buffer[start + len(TOOL_CALL_START) :]
            self._inside = True
        return "".join(content), calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The rest of the buffer at the end of the output: a call missing only its end tag
        still counts; anything else is content."""
        content: list[str] = []
        calls: list[ToolCall] = []
        if self._inside:
            self._inside = False
            if not self._close(self._buffer, "", content, calls):
                self.truncated_call = True
        else:
            content.append(self._buffer.rstrip() if self.num_calls else self._buffer)
        self._buffer = ""
        return "".join(content), calls

    def _close(self, body: str, end_tag: str, content: list[str], calls: list[ToolCall]) -> bool:
        call = self._parse_call(body)
        if call is None:
            content.append(TOOL_CALL_START + body + end_tag)
            return False
        self.num_calls += 1
        calls.append(call)
        self._buffer = self._buffer.lstrip()
        return True

    def _parse_call(self, body: str) -> ToolCall | None:
        try:
            value = json.loads(body)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict) or value.get("name") not in self.tool_names:
            return None
        # "parameters" is what some models (Llama 3.1's JSON format) write instead.
        arguments = value.get("arguments", value.get("parameters", {}))
        if not isinstance(arguments, dict):
            return None
        return ToolCall(value["name"], json.dumps(arguments, ensure_ascii=False))


def _held_back(text: str) -> int:
    """How many trailing characters to keep: a possible start of the tag, and whitespace that
    is dropped if a call follows."""
    keep = 0
    for size in range(min(len(text), len(TOOL_CALL_START) - 1), 0, -1):
        if TOOL_CALL_START.startswith(text[-size:]):
            keep = size
            break
    stripped = text[: len(text) - keep]
    return keep + len(stripped) - len(stripped.rstrip())


def parse_tool_calls(text: str, tool_names: set[str]) -> ParsedOutput:
    """Split a whole output into content and the calls of functions in ``tool_names``."""
    parser = ToolCallStreamParser(tool_names)
    content, calls = parser.feed(text)
    rest, more = parser.finish()
    text = content + rest
    return ParsedOutput(text or None, calls + more, parser.truncated_call)
