"""Chat templates: OpenAI-style messages -> prompt text, rendered with jinja2 as transformers does.

The template comes from the model (GGUF ``tokenizer.chat_template``, or tokenizer_config.json);
it runs in jinja2's immutable sandbox with transformers' helpers (``raise_exception``, a
``tojson`` without HTML escaping, ``strftime_now``, loop controls, trimmed blocks).
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.sandbox

# Gemma's turn format, for Gemma GGUF files that carry no ``tokenizer.chat_template`` (the
# gemma3-270m Q4_K_M file): ``<start_of_turn>{user|model}\n{text}<end_of_turn>\n`` per message,
# a system message prefixed to the first user turn with a blank line, and ``<start_of_turn>model\n``
# as the generation prompt (Gemma's model card; llama.cpp's built-in "gemma" template). BOS is not
# written: the tokenizer adds it (``tokenizer.ggml.add_bos_token``).
GEMMA_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_prefix = '' -%}"
    "{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<start_of_turn>' + role + '\n' + (system_prefix if loop.first else '') -}}"
    "{{- (message['content'] or '') | trim -}}"
    "{{- '<end_of_turn>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"
)


def render_chat_template(
    template: str, messages: object, add_generation_prompt: bool = True, **variables: Any
) -> str:
    """Render ``messages`` (validated, text parts joined) with ``template``.

    ``variables`` (bos_token, eos_token, tools, ...) become template variables.

    Raises:
        ValueError: naming ``chat_template`` for a template jinja2 cannot compile, and
            ``messages`` for malformed messages or when the template calls raise_exception.
    """
    try:
        compiled = _compile_chat_template(template)
    except jinja2.TemplateError as e:
        raise ValueError(f"chat_template: not a valid jinja template: {e}") from e
    try:
        return compiled.render(
            messages=_normalize_messages(messages),
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.TemplateError as e:
        raise ValueError(f"messages: rejected by the chat template: {e}") from e


def _normalize_messages(messages: object) -> list[dict[str, Any]]:
    """Validated copies of chat messages with `content` parts joined into one string."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: must be a non-empty list of messages")
    normalized = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}]: must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}].role: must be a non-empty string")
        if isinstance(content, list):
            content = "\n".join(
                _text_part(part, f"messages[{i}].content[{j}]") for j, part in enumerate(content)
            )
        elif content is None and role == "assistant":
            content = None if message.get("tool_calls") else ""  # tool-call turns may omit text
        elif not isinstance(content, str):
            raise ValueError(f"messages[{i}].content: must be a string or a list of text parts")
        normalized.append({**message, "content": content})
    return normalized


def _text_part(part: object, where: str) -> str:
    """The text of one OpenAI content part; only {"type": "text"} parts are supported."""
    if not isinstance(part, dict) or part.get("type") != "text":
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        raise ValueError(
            f"{where}: unsupported content part {kind!r}; only 'text' parts are allowed"
        )
    if not isinstance(part.get("text"), str):
        raise ValueError(f"{where}.text: must be a string")
    return part["text"]


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: object, **options: Any) -> str:
    # transformers' tojson: unlike jinja2's, no HTML escaping (templates emit JSON verbatim).
    return json.dumps(value, **{"ensure_ascii": False, **options})


@functools.lru_cache(maxsize=32)
def _compile_chat_template(template: str) -> jinja2.Template:
    """A sandboxed jinja2 template set up like transformers' chat template renderer."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


@functools.lru_cache(maxsize=32)
def template_variables(template: str) -> frozenset[str]:
    """Names a template reads from its context (``messages``, ``tools``, ``bos_token`` ...);
    empty for a template jinja2 cannot parse (rendering reports that error)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(extensions=[jinja2.ext.loopcontrols])
    try:
        return frozenset(jinja2.meta.find_undeclared_variables(env.parse(template)))
    except jinja2.TemplateError:
        return frozenset()
