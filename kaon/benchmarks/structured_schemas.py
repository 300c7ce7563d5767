"""JSON schemas for structured outputs (acceptance tests, ``kaon bench structured``).

Each bounds its strings, arrays and numbers so that even the 135M test model finishes them
within a modest max_tokens."""

from __future__ import annotations

from typing import Any

_NAME = {"type": "string", "minLength": 1, "maxLength": 12}

SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {
        "type": "object",
        "properties": {"name": _NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "enum_color": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}},
        "required": ["color"],
        "additionalProperties": False,
    },
    "bool_flag": {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "reason": _NAME},
        "required": ["ok", "reason"],
        "additionalProperties": False,
    },
    "int_array": {
        "type": "array",
        "items": {"type": "integer", "minimum": -50, "maximum": 50},
        "minItems": 2,
        "maxItems": 4,
    },
    "string_array": {"type": "array", "items": _NAME, "minItems": 1, "maxItems": 3},
    "nested": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 1, "maximum": 9999},
                    "name": _NAME,
                },
                "required": ["id", "name"],
                "additionalProperties": False,
            },
            "active": {"type": "boolean"},
        },
        "required": ["user", "active"],
        "additionalProperties": False,
    },  # fmt: skip
    "pattern_code": {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}},
        "required": ["code"],
        "additionalProperties": False,
    },
    "pattern_date": {
        "type": "object",
        "properties": {"date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}},
        "required": ["date"],
        "additionalProperties": False,
    },
    "number_bounds": {
        "type": "object",
        "properties": {
            "price": {"type": "number", "minimum": 0, "maximum": 100},
            "count": {"type": "integer", "exclusiveMinimum": 0, "maximum": 10},
        },
        "required": ["price", "count"],
        "additionalProperties": False,
    },
    "any_of": {
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": 999},
            {
                "type": "object",
                "properties": {"text": _NAME},
                "required": ["text"],
                "additionalProperties": False,
            },
        ]
    },  # fmt: skip
    "ref_defs": {
        "$defs": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "minimum": -9, "maximum": 9},
                    "y": {"type": "integer", "minimum": -9, "maximum": 9},
                },
                "required": ["x", "y"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
        "required": ["start", "end"],
        "additionalProperties": False,
    },  # fmt: skip
    "array_of_objects": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"sku": _NAME, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
            "required": ["sku", "qty"],
            "additionalProperties": False,
        },
        "minItems": 1,
        "maxItems": 2,
    },
    "optional_keys": {
        "type": "object",
        "properties": {
            "title": _NAME,
            "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
        },
        "required": ["title"],
        "additionalProperties": False,
    },  # fmt: skip
    "enum_int": {
        "type": "object",
        "properties": {"level": {"type": "integer", "enum": [1, 2, 3, 5, 8]}},
        "required": ["level"],
        "additionalProperties": False,
    },
    "const_and_enum": {
        "type": "object",
        "properties": {"kind": {"const": "event"}, "priority": {"enum": ["low", "high"]}},
        "required": ["kind", "priority"],
        "additionalProperties": False,
    },
    "nullable": {
        "type": "object",
        "properties": {"nickname": {"anyOf": [_NAME, {"type": "null"}]}},
        "required": ["nickname"],
        "additionalProperties": False,
    },
    "nested_arrays": {
        "type": "object",
        "properties": {
            "matrix": {
                "type": "array",
                "items": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 9},
                    "minItems": 2,
                    "maxItems": 2,
                },
                "minItems": 2,
                "maxItems": 2,
            }
        },
        "required": ["matrix"],
        "additionalProperties": False,
    },  # fmt: skip
    "string_enum_top": {"enum": ["alpha", "beta", "gamma"]},
    "bounded_integer_top": {"type": "integer", "minimum": 10, "maximum": 99},
    "address": {
        "type": "object",
        "properties": {
            "street": {"type": "string", "maxLength": 16},
            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            "country": {"enum": ["US", "FR", "DE"]},
        },
        "required": ["street", "zip", "country"],
        "additionalProperties": False,
    },
    "ref_recursive_list": {
        "$defs": {"tag": {"type": "string", "pattern": "^[a-z]{2,6}$"}},
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"$ref": "#/$defs/tag"},
                "minItems": 1,
                "maxItems": 3,
            }
        },
        "required": ["tags"],
        "additionalProperties": False,
    },  # fmt: skip
    "one_of_shapes": {
        "oneOf": [
            {
                "type": "object",
                "properties": {"circle": {"type": "integer", "minimum": 1, "maximum": 9}},
                "required": ["circle"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"square": {"type": "integer", "minimum": 1, "maximum": 9}},
                "required": ["square"],
                "additionalProperties": False,
            },
        ]
    },  # fmt: skip
}

# `kaon bench serve --structured-output json`: at least 64 small objects, so the grammar cannot
# end before max_tokens and constrained requests generate as many tokens as unconstrained ones.
BENCH_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"name": _NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "minItems": 64,
}
