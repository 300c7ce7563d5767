"""StructuredOutputsParams -> an llguidance grammar (a JSON string), validated.

llguidance takes one grammar format for every kind of constraint: JSON schemas, regexes and Lark
grammars are all turned into its grammar JSON (``LLMatcher.grammar_from_*``). A choice becomes a
Lark alternation of string literals. Validation here needs no tokenizer and takes well under a
millisecond for the test schemas, so the engine runs it synchronously at admission: a bad schema
or regex is a ValueError (HTTP 400) before the request is queued.
"""

from __future__ import annotations

import functools
import json

import llguidance

from kaon.sampling_params import StructuredOutputsParams

_MAX_CACHED = 512  # validated grammars kept (keyed by the constraint's text)
# JSON is written on one line as json.dumps does ({"a": 1, "b": [2, 3]}). llguidance's default,
# any whitespace between tokens, lets small models emit newlines until max_tokens. A schema can
# override this with its own "x-guidance" options.
_JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def grammar_from_params(params: StructuredOutputsParams) -> str:
    """The llguidance grammar for ``params``.

    Raises:
        ValueError: ``structured_outputs.<field>: ...`` when the schema is not valid JSON or not a
            schema llguidance supports, the regex or grammar does not compile, or the choices
            are empty. The message is llguidance's.
    """
    kind = params.kind
    if kind == "json":
        schema = params.json
        if isinstance(schema, dict):
            schema = json.dumps(schema)  # key order kept: properties come out in it
        return _checked("json", _json_grammar(schema))
    if kind == "json_object":
        return _checked("json_object", _json_grammar('{"type": "object"}'))
    if kind == "regex":
        return _checked("regex", _regex_grammar(params.regex))
    if kind == "choice":
        return _checked("choice", _choice_grammar(tuple(params.choice)))
    return _checked("grammar", _lark_grammar(params.grammar))


def _checked(field: str, result: tuple[str, str]) -> str:
    grammar, error = result
    if error:
        raise ValueError(f"structured_outputs.{field}: {error.strip()}")
    return grammar


@functools.lru_cache(maxsize=_MAX_CACHED)
def _json_grammar(schema_text: str) -> tuple[str, str]:
    try:
        schema = json.loads(schema_text)
    except json.JSONDecodeError as error:
        return "", f"not valid JSON ({error})"
    if not isinstance(schema, dict | bool):
        return "", "a JSON schema must be an object or a boolean"
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_LAYOUT)
    except ValueError as error:
        return "", f"invalid JSON schema: {error}"
    return _validate(grammar, "invalid JSON schema: ")


@functools.lru_cache(maxsize=_MAX_CACHED)
def _regex_grammar(regex: str) -> tuple[str, str]:
    return _validate(llguidance.LLMatcher.grammar_from_regex(regex), "")


@functools.lru_cache(maxsize=_MAX_CACHED)
def _choice_grammar(choices: tuple[str, ...]) -> tuple[str, str]:
    # Lark string literals take JSON's escapes, so json.dumps quotes any choice safely.
    alternatives = " | ".join(json.dumps(choice, ensure_ascii=False) for choice in choices)
    return _validate(llguidance.LLMatcher.grammar_from_lark(f"start: {alternatives}\n"), "")


@functools.lru_cache(maxsize=_MAX_CACHED)
def _lark_grammar(lark: str) -> tuple[str, str]:
    return _validate(llguidance.LLMatcher.grammar_from_lark(lark), "invalid Lark grammar: ")


def _validate(grammar: str, prefix: str) -> tuple[str, str]:
    error = llguidance.LLMatcher.validate_grammar(grammar)
    return (grammar, "") if not error else ("", prefix + error)
