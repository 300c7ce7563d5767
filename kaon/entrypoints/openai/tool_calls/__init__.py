"""OpenAI tool calling: tool-aware chat rendering, the grammar that enforces calls, and the parser
that turns generated text into ``tool_calls`` (whole outputs and streams).

The wire format of a call in the generated text is Hermes-style (see docs/tool_calling.md):
``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.
"""

from kaon.entrypoints.openai.tool_calls.grammar import tool_call_grammar
from kaon.entrypoints.openai.tool_calls.parser import (
    ParsedOutput,
    ToolCallStreamParser,
    parse_tool_calls,
)
from kaon.entrypoints.openai.tool_calls.plan import ToolCallPlan, tool_finish_reason
from kaon.entrypoints.openai.tool_calls.rendering import render_inputs

__all__ = [
    "ParsedOutput",
    "ToolCallPlan",
    "ToolCallStreamParser",
    "parse_tool_calls",
    "render_inputs",
    "tool_call_grammar",
    "tool_finish_reason",
]
