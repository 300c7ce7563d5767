"""What one chat request asks of tool calling: shown tools, enforcement grammar, output parsing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kaon.entrypoints.openai.tool_calls.grammar import tool_call_grammar
from kaon.entrypoints.openai.tool_calls.parser import (
    ParsedOutput,
    ToolCallStreamParser,
    parse_tool_calls,
)
from kaon.sampling_params import SamplingParams, StructuredOutputsParams


@dataclass(frozen=True)
class ToolCallPlan:
    """Tools of a request whose ``tool_choice`` is not "none" (OpenAI dict shapes).

    With "none" (or no tools) there is no plan: tools are not shown, nothing is enforced and
    the output is plain content, as OpenAI does.
    """

    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]  # "auto" | "required" | {"type": "function", ...}
    parallel_tool_calls: bool

    @classmethod
    def create(
        cls,
        tools: list[dict[str, Any]],
        tool_choice: str | dict[str, Any],
        parallel_tool_calls: bool | None,
    ) -> ToolCallPlan | None:
        """None when there is nothing to do (no tools, or tool_choice "none")."""
        if not tools or tool_choice == "none":
            return None
        parallel = True if parallel_tool_calls is None else parallel_tool_calls  # OpenAI default
        return cls(tools, tool_choice, parallel)

    @property
    def tool_names(self) -> set[str]:
        """The names a parsed call may have: all tools, or the one a named choice forces."""
        if isinstance(self.tool_choice, dict):
            return {self.tool_choice["function"]["name"]}
        return {tool["function"]["name"] for tool in self.tools}

    def grammar(self) -> str:
        """The Lark grammar that enforces the calls (see grammar.py).

        Raises:
            ValueError: naming ``tools[i].function.parameters`` for a schema that does not compile.
        """
        grammar = tool_call_grammar(self.tools, self.tool_choice, self.parallel_tool_calls)
        assert grammar is not None  # "none" never makes a plan
        return grammar

    def constrain(self, params: SamplingParams) -> SamplingParams:
        """``params`` with the tool-call grammar enforced while decoding.

        Raises:
            ValueError: naming ``tools[i].function.parameters`` for a schema that does not compile.
        """
        if params.structured_outputs is not None:
            raise ValueError(
                "tools: cannot be combined with another output constraint "
                "(response_format or structured_outputs) in one request"
            )
        grammar = StructuredOutputsParams(grammar=self.grammar())
        return dataclasses.replace(params, structured_outputs=grammar)

    def parse(self, text: str) -> ParsedOutput:
        return parse_tool_calls(text, self.tool_names)

    def stream_parser(self) -> ToolCallStreamParser:
        return ToolCallStreamParser(self.tool_names)


def tool_finish_reason(finish_reason: str | None, num_calls: int, truncated_call: bool) -> Any:
    """OpenAI's ``finish_reason``: "tool_calls" once the model made a call, unless a later call
    was cut short (then "length" says the output is incomplete)."""
    if num_calls and not truncated_call and finish_reason in ("stop", "length"):
        return "tool_calls"
    return finish_reason
