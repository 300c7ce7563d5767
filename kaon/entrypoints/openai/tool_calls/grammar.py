"""The Lark grammar (llguidance dialect) that enforces tool calls while decoding.

The grammar follows the Hermes format of ``hermes.py``. Each function becomes one alternative
whose name is a literal and whose arguments are the function's own ``parameters`` schema
(embedded with ``%json``, so its ``$ref``/``$defs`` keep their root)::

    start: call ("\\n" call)*   # just ``call`` without parallel_tool_calls or when named
    call: "<tool_call>" "\\n" function "\\n" "</tool_call>"
    function: function_0 | function_1 | ...        # only the named one for a named tool_choice
    function_0: "{\\"name\\": \\"get_weather\\", \\"arguments\\": " arguments_0 "}"
    arguments_0: %json {...parameters of get_weather...}

``"auto"`` lets the model write free text; once it writes ``<tool_call>`` the lazy ``head``
lexeme ends and the call (name, arguments, closing tag) is enforced::

    start: TEXT | head "\\n" function "\\n" "</tool_call>" ("\\n" call)*
    head[lazy]: TEXT "<tool_call>"

Objects with ``properties`` and no ``additionalProperties`` are closed in the grammar's copy of
a schema (as OpenAI's strict mode requires), so a small model cannot wander into invented keys;
every output still validates against the schema the client sent. Whitespace inside the JSON is
fixed to ``json.dumps``'s default separators. Syntax: llguidance docs/syntax.md.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from kaon.entrypoints.openai.tool_calls.hermes import CALL_SEPARATOR, TOOL_CALL_END, TOOL_CALL_START

# llguidance's JSON options for the arguments: no free whitespace (a small model can loop on it).
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_EMPTY_PARAMETERS = {"type": "object", "properties": {}}  # OpenAI: omitted = no parameters
# Keywords whose values are schemas (or lists/maps of schemas) that describe the same instance
# position, where closing an object is safe. allOf is left alone: closing one branch would
# reject the properties of the others.
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_VALUES = ("items", "additionalItems", "not", "contains", "if", "then", "else")


def tool_call_grammar(
    tools: list[dict[str, Any]], tool_choice: str | dict[str, Any], parallel_tool_calls: bool
) -> str | None:
    """The Lark grammar for ``tool_choice`` over ``tools`` (OpenAI shapes, already validated).

    Returns None for ``"none"`` (nothing to enforce). A named ``tool_choice`` keeps only that
    function, called once. ``parallel_tool_calls`` allows one or more calls instead of exactly
    one.

    Raises:
        ValueError: naming ``tools[i].function.parameters`` when llguidance cannot compile that
            schema, or ``tool_choice`` for a name that is not in ``tools``.
    """
    if tool_choice == "none":
        return None
    functions = [tool["function"] for tool in tools]
    indices = list(range(len(functions)))
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        indices = [i for i in indices if functions[i]["name"] == name]
        if not indices:
            raise ValueError(f"tool_choice: function {name!r} is not in tools")
    rules, alternatives = [], []
    for i in indices:
        function = functions[i]
        schema = arguments_schema(function.get("parameters"))
        _check_schema(schema, f"tools[{i}].function.parameters")
        prefix = json.dumps({"name": function["name"]}, ensure_ascii=False)[:-1] + ', "arguments": '
        rules.append(f"function_{i}: {_literal(prefix)} arguments_{i} {_literal('}')}")
        rules.append(f"arguments_{i}: %json {json.dumps(schema, ensure_ascii=False)}")
        alternatives.append(f"function_{i}")
    start, end, separator = (_literal(s) for s in (TOOL_CALL_START, TOOL_CALL_END, CALL_SEPARATOR))
    # A named function is called exactly once (as vLLM and OpenAI do), whatever
    # parallel_tool_calls says.
    parallel = parallel_tool_calls and not isinstance(tool_choice, dict)
    more = f" ({separator} call)*" if parallel else ""
    if tool_choice == "auto":
        lines = [f'start: TEXT | head "\\n" function "\\n" {end}{more}',
                 f"head[lazy]: TEXT {start}", r"TEXT: /(.|\n)*/"]  # fmt: skip
    else:
        lines = [f"start: call{more}"]
    lines.append(f'call: {start} "\\n" function "\\n" {end}')
    lines.append(f"function: {' | '.join(alternatives)}")
    lines = ["%llguidance {}", *lines, *rules]
    return "\n".join(lines) + "\n"


def arguments_schema(parameters: dict[str, Any] | None) -> dict[str, Any]:
    """The schema the grammar enforces for a function's arguments: a closed copy of
    ``parameters`` with llguidance's whitespace options (``x-guidance``)."""
    schema = copy.deepcopy(parameters) if parameters is not None else dict(_EMPTY_PARAMETERS)
    _close_objects(schema)
    return {**schema, "x-guidance": _JSON_OPTIONS}


def _close_objects(schema: Any) -> None:
    """Set ``additionalProperties: false`` on object schemas that list ``properties`` and say
    nothing about extra keys (in place, recursively through same-instance keywords)."""
    if not isinstance(schema, dict):
        return
    open_keys = ("additionalProperties", "patternProperties", "unevaluatedProperties", "allOf")
    if isinstance(schema.get("properties"), dict) and not any(k in schema for k in open_keys):
        schema["additionalProperties"] = False
    for key in _SCHEMA_LISTS:
        for item in schema.get(key, []) if isinstance(schema.get(key), list) else []:
            _close_objects(item)
    for key in _SCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            for item in schema[key].values():
                _close_objects(item)
    for key in _SCHEMA_VALUES:
        _close_objects(schema.get(key))
    if isinstance(schema.get("additionalProperties"), dict):
        _close_objects(schema["additionalProperties"])


def _check_schema(schema: dict[str, Any], field: str) -> None:
    """Raises ValueError naming ``field`` when llguidance cannot compile ``schema``."""
    from llguidance import LLMatcher  # the engine's grammar library, imported when needed

    try:
        grammar = LLMatcher.grammar_from_json_schema(schema)
    except ValueError as error:
        raise ValueError(f"{field}: not a valid JSON schema ({error})") from None
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise ValueError(f"{field}: not a usable JSON schema ({error.splitlines()[0]})")


def _literal(text: str) -> str:
    """A Lark string literal for ``text`` (JSON escapes are valid Lark escapes)."""
    return json.dumps(text, ensure_ascii=False)
