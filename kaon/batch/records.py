"""Batch input and output lines: parse and validate the JSONL input, format the output records.

Input (one JSON object per line, blank lines skipped)::

    {"id": "q1", "prompt": "Once upon a time", "max_tokens": 32}
    {"id": 7, "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.7, "seed": 1}

``id`` is optional (default: the record's 0-based index) and is copied to the output line.
Exactly one of ``prompt`` (text or a list of token ids) and ``messages`` (a chat conversation,
rendered with the model's chat template on the worker) is required. Any of ``SAMPLING_FIELDS``
overrides the job's default SamplingParams for that line.

Output (one line per input record, in input order)::

    {"id": "q1", "index": 0, "text": "...", "token_ids": [...], "finish_reason": "length",
     "usage": {"prompt_tokens": 5, "completion_tokens": 32, "total_tokens": 37}}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaon.outputs import RequestOutput
from kaon.sampling_params import SamplingParams

# Per-line SamplingParams overrides (OpenAI / vLLM names). ``n`` is left out: one output per line.
SAMPLING_FIELDS = frozenset({
    "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "seed", "max_tokens", "min_tokens", "stop", "stop_token_ids",
    "ignore_eos", "include_stop_str_in_output", "skip_special_tokens",
})  # fmt: skip
_INPUT_FIELDS = frozenset({"id", "prompt", "messages"})


@dataclass
class BatchRecord:
    """One input line, validated: what a worker needs to run it.

    ``prompt`` is a text or token ids; ``messages`` a chat conversation; exactly one is set.
    """

    index: int  # 0-based position among the input records (output order)
    id: Any  # the input's "id" (JSON scalar), or ``index`` when it had none
    sampling_params: SamplingParams
    prompt: str | list[int] | None = None
    messages: list[dict[str, Any]] | None = None


def parse_record(data: object, index: int, defaults: SamplingParams, where: str) -> BatchRecord:
    """Validate one decoded input object.

    ``where`` names the record in errors (``"line 12"``).

    Raises:
        ValueError: ``"<where>: field '<name>' ..."`` for an unknown, missing or bad field.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _INPUT_FIELDS - SAMPLING_FIELDS)
    if unknown:
        raise ValueError(
            f"{where}: unknown field {unknown[0]!r}; allowed: id, prompt, messages, "
            f"{', '.join(sorted(SAMPLING_FIELDS))}"
        )
    record_id = data.get("id", index)
    if not (record_id is None or isinstance(record_id, str | int | float)):
        raise ValueError(f"{where}: field 'id' must be a string or a number")
    prompt, messages = data.get("prompt"), data.get("messages")
    if (prompt is None) == (messages is None):
        raise ValueError(f"{where}: exactly one of the fields 'prompt' and 'messages' is required")
    if prompt is not None and not _is_prompt(prompt):
        raise ValueError(f"{where}: field 'prompt' must be a non-empty string or list of token ids")
    if messages is not None and not _is_messages(messages):
        raise ValueError(
            f"{where}: field 'messages' must be a non-empty list of objects with 'role' and "
            "'content'"
        )
    overrides = {key: value for key, value in data.items() if key in SAMPLING_FIELDS}
    try:
        params = dataclasses.replace(defaults, **overrides)
    except (ValueError, TypeError) as error:
        field = next((name for name in overrides if str(error).startswith(name)), None)
        named = f"field {field!r}: " if field else ""
        raise ValueError(f"{where}: {named}{error}") from None
    return BatchRecord(index, record_id, params, prompt, messages)


def _is_prompt(prompt: object) -> bool:
    if isinstance(prompt, str):
        return bool(prompt)
    return (
        isinstance(prompt, list)
        and bool(prompt)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    )


def _is_messages(messages: object) -> bool:
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
    )


def read_records(path: str | Path, defaults: SamplingParams) -> list[BatchRecord]:
    """Read and validate every line of a JSONL input file before any work starts.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: ``"<path> line N: ..."`` for the first bad line (invalid JSON, unknown or bad
            field); also when the file holds no records.
    """
    records: list[BatchRecord] = []
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            where = f"{path} line {line_number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: invalid JSON ({error.msg})") from None
            records.append(parse_record(data, len(records), defaults, where))
    if not records:
        raise ValueError(f"{path}: no input records")
    return records


def records_from_prompts(
    prompts: list[str | list[int] | list[dict[str, Any]]],
    sampling_params: SamplingParams | list[SamplingParams],
) -> list[BatchRecord]:
    """Records for the Python API: a prompt text, token ids or a chat conversation each.

    Raises:
        ValueError: ``"prompts[i]: ..."`` for a bad prompt; when the lengths differ.
    """
    if isinstance(sampling_params, SamplingParams):
        params_list = [sampling_params] * len(prompts)
    else:
        params_list = list(sampling_params)
        if len(params_list) != len(prompts):
            raise ValueError(
                f"sampling_params has {len(params_list)} entries for {len(prompts)} prompts"
            )
    records = []
    for index, (prompt, params) in enumerate(zip(prompts, params_list, strict=True)):
        is_chat = isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict)
        data = {"messages": prompt} if is_chat else {"prompt": prompt}
        records.append(parse_record(data, index, params, f"prompts[{index}]"))
    return records


def output_record(record: BatchRecord, output: RequestOutput) -> dict[str, Any]:
    """The output line of one finished request (its first completion)."""
    completion = output.outputs[0]
    num_prompt_tokens = len(output.prompt_token_ids)
    num_completion_tokens = len(completion.token_ids)
    return {
        "id": record.id,
        "index": record.index,
        "text": completion.text,
        "token_ids": list(completion.token_ids),
        "finish_reason": completion.finish_reason,
        "usage": {
            "prompt_tokens": num_prompt_tokens,
            "completion_tokens": num_completion_tokens,
            "total_tokens": num_prompt_tokens + num_completion_tokens,
        },
    }
