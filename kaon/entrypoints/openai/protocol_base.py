"""The base of every request model: strict fields, explicit ``null`` = not set, and OpenAI
fields that are accepted but change nothing here.

``null`` rule (one mechanism for every request model and every nested model, e.g.
``stream_options`` and ``messages[i]``): a JSON ``null`` for a field whose type does not admit
None is dropped before validation, so the field's default applies (``"n": null`` -> n = 1,
``"stream": null`` -> false; a null for a field kaon does not know is not a 400 either: it
asks for nothing). A field whose type admits None keeps it, with the meaning its
model documents (for most that is the default anyway; ``max_tokens: null`` on /v1/completions
means "the rest of the context", as in vLLM). A required field's null is dropped too, so it is
missing: a 400 ``<field>: Field required``.

Spec: OpenAI's API reference marks these fields nullable; vLLM's protocol.py declares them
``Optional`` with the same defaults.
"""

from __future__ import annotations

import functools
import logging
import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.fields import FieldInfo

logger = logging.getLogger("kaon")

# OpenAI fields that change nothing in kaon's output: accepted, type-checked, logged at debug.
IGNORED_FIELDS = ("store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier")


def _admits_none(field: FieldInfo) -> bool:
    annotation = field.annotation
    if annotation is Any or annotation is None or annotation is type(None):
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        return type(None) in get_args(annotation)
    return False


@functools.cache
def _null_kept_fields(model: type[BaseModel]) -> frozenset[str]:
    """Fields of ``model`` whose explicit null is kept: optional ones whose type admits None."""
    fields = model.model_fields.items()
    return frozenset(name for name, f in fields if not f.is_required() and _admits_none(f))


class StrictModel(BaseModel):
    """Unknown fields are a 400 naming them; no "1" -> 1 coercion; null = not set (above)."""

    # allow_inf_nan: a float field is finite (JSON's 1e999 would parse as inf).
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        if isinstance(data, dict) and None in data.values():
            kept = _null_kept_fields(cls)
            data = {k: v for k, v in data.items() if v is not None or k in kept}
        return data


class IgnoredFields(StrictModel):
    """OpenAI's bookkeeping fields; none of them changes what is generated.

    ``store`` (keep the output for distillation / evals: nothing is stored), ``metadata`` (tags
    for stored objects), ``service_tier`` (processing tier), ``prompt_cache_key`` (a prompt
    caching hint: kaon's prefix cache is automatic), ``safety_identifier`` and ``user`` (an
    end-user id for abuse monitoring).
    """

    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _log_ignored(self) -> IgnoredFields:
        ignored = [name for name in (*IGNORED_FIELDS, "user") if getattr(self, name) is not None]
        if ignored:
            logger.debug("ignoring request fields that change nothing here: %s", ignored)
        return self
