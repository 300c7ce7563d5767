"""Structured outputs through LLM / LLMEngine: every kind of constraint, the admission check,
the compile cache, and preemption (recompute keeps the grammar state)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from kaon import LLM, SamplingParams, StructuredOutputsParams
from kaon.benchmarks.structured_schemas import SCHEMAS
from tests.conftest import assert_all_blocks_free

PROMPTS = [
    "Reply in JSON: a person.",
    "Reply in JSON: a color.",
    "Reply in JSON: a code.",
    "Reply in JSON: is it ok?",
]
NAMES = ["person", "enum_color", "pattern_code", "bool_flag"]


def _constrained(name: str, max_tokens: int = 120, **params) -> SamplingParams:
    structured = StructuredOutputsParams(json=SCHEMAS[name])
    return SamplingParams(max_tokens=max_tokens, structured_outputs=structured, **params)


def test_structured_outputs_params_needs_exactly_one_field():
    with pytest.raises(ValueError, match="structured_outputs: set exactly one"):
        StructuredOutputsParams()
    with pytest.raises(ValueError, match="structured_outputs: set exactly one .*regex, choice"):
        StructuredOutputsParams(regex="a", choice=["a"])
    with pytest.raises(ValueError, match="structured_outputs.choice"):
        StructuredOutputsParams(choice=[])
    assert StructuredOutputsParams(grammar='start: "x"').kind == "grammar"


def test_every_kind_of_constraint(llm):
    params = [_constrained("person", temperature=0), _constrained("ref_defs", temperature=1.0,
                                                                   seed=5, n=2)]  # fmt: skip
    regex = r"[a-z]+@[a-z]+\.(com|org)"
    params.append(
        SamplingParams(
            temperature=1.0,
            seed=1,
            max_tokens=30,
            structured_outputs=StructuredOutputsParams(regex=regex),
        )
    )
    choices = ["Paris", "London", "Rome"]
    params.append(
        SamplingParams(
            temperature=0, max_tokens=10, structured_outputs=StructuredOutputsParams(choice=choices)
        )
    )
    grammar = 'start: "x = " NUM ";"\nNUM: /[1-9][0-9]?/\n'
    params.append(
        SamplingParams(
            temperature=0,
            max_tokens=10,
            structured_outputs=StructuredOutputsParams(grammar=grammar),
        )
    )
    prompts = ["A person:", "Two points:", "An email:", "Capital of France?", "Code:"]
    outputs = llm.generate(prompts, params, use_tqdm=False)  # fmt: skip
    texts = [[c.text for c in o.outputs] for o in outputs]
    assert all(c.finish_reason == "stop" for o in outputs for c in o.outputs), texts
    jsonschema.validate(json.loads(texts[0][0]), SCHEMAS["person"])
    for text in texts[1]:
        jsonschema.validate(json.loads(text), SCHEMAS["ref_defs"])
    assert re.fullmatch(regex, texts[2][0])
    assert texts[3][0] in choices
    assert re.fullmatch(r"x = [1-9][0-9]?;", texts[4][0])
    assert_all_blocks_free(llm)


def test_bad_constraint_is_a_value_error_at_admission(llm):
    for params, field in [
        (StructuredOutputsParams(regex="(unclosed"), "structured_outputs.regex"),
        (StructuredOutputsParams(json={"type": "integer", "minimum": 5, "maximum": 1}),
         "structured_outputs.json"),
        (StructuredOutputsParams(json="{not json"), "structured_outputs.json"),
        (StructuredOutputsParams(grammar="start: nothing_here"), "structured_outputs.grammar"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(field)):
            llm.generate(["hi"], SamplingParams(structured_outputs=params), use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    (ok,) = llm.generate(["hi"], SamplingParams(max_tokens=2), use_tqdm=False)
    assert len(ok.outputs[0].token_ids) == 2


def test_same_schema_compiles_once(llm):
    manager = llm.engine.structured_output_manager
    schema = {
        "type": "object",
        "properties": {"q": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["q"],
        "additionalProperties": False,
    }
    params = SamplingParams(temperature=0, max_tokens=20,
                            structured_outputs=StructuredOutputsParams(json=schema))  # fmt: skip
    before = len(manager.compile_seconds)
    outputs = llm.generate(["a", "b", "c"], params, use_tqdm=False)
    assert len(manager.compile_seconds) == before + 1
    assert all(o.outputs[0].finish_reason == "stop" for o in outputs)
    assert all(json.loads(o.outputs[0].text)["q"] <= 99 for o in outputs)


def test_preemption_keeps_constrained_outputs(llm):
    # max_tokens 30 fits max_model_len 48; two of the four requests fill the KV cache
    greedy = [_constrained(name, temperature=0, max_tokens=30) for name in NAMES]
    reference = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, greedy, use_tqdm=False)]
    per_token = llm.engine.arch_config.kv_bytes_per_token * 4
    small = LLM(kv_cache_memory_bytes=per_token * 48, max_model_len=48, quantization="none")
    try:
        outputs = small.generate(PROMPTS, greedy, use_tqdm=False)
        assert small.engine.stats().num_preemptions > 0
        assert [o.outputs[0].token_ids for o in outputs] == reference
        assert_all_blocks_free(small)
    finally:
        small.close()


def test_bitmask_fill_on_a_thread_gives_the_same_tokens(llm):
    """The grammar bitmask filled on a worker thread during the forward pass (the engine's
    choice when a core is free) and filled before it give the same tokens, constrained rows
    and unconstrained ones alike."""
    params = [
        _constrained("person", temperature=0, max_tokens=40),
        SamplingParams(temperature=0, max_tokens=12),
        _constrained("enum_color", temperature=1.0, seed=3, max_tokens=40),
    ]
    prompts = ["A person:", "The sky is", "A color:"]
    engine = llm.engine
    before = engine._overlap_grammar
    try:
        engine._overlap_grammar = False
        reference = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        engine._overlap_grammar = True
        outputs = llm.generate(prompts, params, use_tqdm=False)
    finally:
        engine._overlap_grammar = before
    assert [o.outputs[0].token_ids for o in outputs] == reference
    jsonschema.validate(json.loads(outputs[0].outputs[0].text), SCHEMAS["person"])
    jsonschema.validate(json.loads(outputs[2].outputs[0].text), SCHEMAS["enum_color"])
