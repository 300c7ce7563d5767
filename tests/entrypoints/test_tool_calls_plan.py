"""ToolCallPlan: which requests get tool handling, and the grammar they are decoded with."""

from __future__ import annotations

import pytest

from kaon.entrypoints.openai.tool_calls.plan import ToolCallPlan, tool_finish_reason
from kaon.sampling_params import SamplingParams, StructuredOutputsParams

TOOLS = [{"type": "function", "function": {"name": name}} for name in ("a", "b")]


def test_no_plan_without_tools_or_with_none() -> None:
    assert ToolCallPlan.create([], "none", None) is None
    assert ToolCallPlan.create(TOOLS, "none", True) is None
    plan = ToolCallPlan.create(TOOLS, "auto", None)
    assert plan is not None and plan.parallel_tool_calls is True  # OpenAI's default
    assert plan.tool_names == {"a", "b"}
    named = ToolCallPlan.create(TOOLS, {"type": "function", "function": {"name": "b"}}, False)
    assert named.tool_names == {"b"} and not named.parallel_tool_calls


def test_constrain_sets_the_grammar_and_refuses_a_second_constraint() -> None:
    plan = ToolCallPlan.create(TOOLS, "required", False)
    params = plan.constrain(SamplingParams(temperature=0, max_tokens=8))
    assert params.structured_outputs == StructuredOutputsParams(grammar=plan.grammar())
    assert params.max_tokens == 8 and params.temperature == 0
    with pytest.raises(ValueError, match="^tools: cannot be combined"):
        plan.constrain(params)


@pytest.mark.parametrize(
    ("reason", "num_calls", "truncated", "expected"),
    [("stop", 1, False, "tool_calls"), ("length", 2, False, "tool_calls"),
     ("length", 1, True, "length"), ("stop", 0, False, "stop"), ("abort", 1, False, "abort")],
)  # fmt: skip
def test_tool_finish_reason(reason: str, num_calls: int, truncated: bool, expected: str) -> None:
    assert tool_finish_reason(reason, num_calls, truncated) == expected
