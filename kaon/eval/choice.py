"""``kaon eval choice``: multiple-choice items scored by log-likelihood (accuracy).

Each JSONL line holds ``"question"`` (rendered as ``"Question: {question}\\nAnswer:"``) or a
verbatim ``"prompt"``, a list of ``"choices"`` (strings) and ``"answer"``, the index of the right
one. Every choice is one engine request whose prompt is context + " " + choice, with
``prompt_logprobs`` on; its score is the sum of the log-probabilities of the choice's tokens
given everything before them (prefix caching is off for such requests, so nothing is skipped).

Two accuracies, as in EleutherAI's lm-evaluation-harness (``acc`` and ``acc_norm``):
    acc       the choice with the highest summed log-likelihood is right
    acc_norm  the same after dividing each sum by the choice's length in UTF-8 bytes
Tokens of a choice: encode(context + continuation) minus the tokens of encode(context) when the
latter is a prefix (the harness's rule); otherwise the continuation is encoded on its own.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from kaon.benchmarks.common import print_table, run_requests, settings, write_json
from kaon.eval.common import add_common_args, packaged_data, read_jsonl, speed_figures, speed_rows

DEFAULT_DATA = "choice.jsonl"


def add_parser(
    commands: argparse._SubParsersAction, add_cli_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add ``choice`` to the ``kaon eval`` subcommands."""
    parser = commands.add_parser("choice", help="multiple choice by log-likelihood: accuracy")
    add_common_args(parser, DEFAULT_DATA)
    add_cli_args(parser)
    parser.set_defaults(handler=run_choice)


def parse_items(records: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """Validate records: "question" or "prompt" (string), "choices" (>= 2 strings) and
    "answer" (an index into choices).

    Raises:
        ValueError: naming the line and the field.
    """
    for record in records:
        where = f"data {path} line {record['_line']}"
        if not isinstance(record.get("prompt", record.get("question")), str):
            raise ValueError(f"{where}: needs a string 'question' or 'prompt'")
        choices = record.get("choices")
        if not isinstance(choices, list) or len(choices) < 2:
            raise ValueError(f"{where}: 'choices' must be a list of at least 2")
        if not all(isinstance(choice, str) and choice for choice in choices):
            raise ValueError(f"{where}: 'choices' must hold non-empty strings")
        answer = record.get("answer")
        if not isinstance(answer, int) or isinstance(answer, bool):
            raise ValueError(f"{where}: 'answer' must be an integer index")
        if not 0 <= answer < len(choices):
            raise ValueError(f"{where}: 'answer' {answer} is not an index into 'choices'")
    return records


def context(item: dict[str, Any]) -> str:
    """The text every choice is appended to."""
    if isinstance(item.get("prompt"), str):
        return item["prompt"]
    return f"Question: {item['question']}\nAnswer:"


def split_tokens(tokenizer: Any, context_text: str, continuation: str) -> tuple[list[int], int]:
    """(token ids of context + continuation, number of trailing ids that are the continuation)."""
    context_ids = tokenizer.encode(context_text)
    whole = tokenizer.encode(context_text + continuation)
    if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
        return whole, len(whole) - len(context_ids)
    continuation_ids = tokenizer.encode(continuation, add_special_tokens=False)
    return context_ids + continuation_ids, len(continuation_ids)


def continuation_logprob(prompt_logprobs: list[Any], prompt_ids: list[int], num: int) -> float:
    """Sum of the log-probabilities (natural log) of the last ``num`` prompt tokens.

    ``prompt_logprobs[p]`` maps token id -> Logprob for position p (None at position 0).
    """
    return sum(
        prompt_logprobs[position][prompt_ids[position]].logprob
        for position in range(len(prompt_ids) - num, len(prompt_ids))
    )


def accuracy(items: list[dict[str, Any]], scores: list[list[float]]) -> dict[str, Any]:
    """acc and acc_norm (see the module docstring) and each item's two picks.

    ``scores[i][j]`` is the summed log-likelihood of choice j of item i. Ties go to the lower
    index.
    """
    picks = []
    for item, item_scores in zip(items, scores, strict=True):
        lengths = [len(f" {choice}".encode()) for choice in item["choices"]]
        normed = [score / length for score, length in zip(item_scores, lengths, strict=True)]
        picks.append(
            {
                "pick": max(range(len(item_scores)), key=item_scores.__getitem__),
                "pick_norm": max(range(len(normed)), key=normed.__getitem__),
            }
        )
    num = len(items)
    return {
        "acc": sum(p["pick"] == item["answer"] for p, item in zip(picks, items, strict=True)) / num,
        "acc_norm": sum(p["pick_norm"] == i["answer"] for p, i in zip(picks, items, strict=True))
        / num,
        "picks": picks,
    }


def run_choice(args: argparse.Namespace) -> int:
    """Handler of ``kaon eval choice``; returns the exit code."""
    from kaon.config import single_engine_options
    from kaon.entrypoints.llm import LLM
    from kaon.sampling_params import SamplingParams

    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be >= 1")
    path = args.data or packaged_data(DEFAULT_DATA)
    items = parse_items(read_jsonl(path, args.limit), path)
    llm = LLM(**single_engine_options(args, "kaon eval choice"))
    engine = llm.engine
    requests = [
        split_tokens(engine.tokenizer, context(item), " " + choice)
        for item in items
        for choice in item["choices"]
    ]
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    prompts = [ids for ids, _ in requests]
    run = run_requests(engine, prompts, params, "eval-choice", progress_desc="choice")
    flat = [
        continuation_logprob(output.prompt_logprobs, ids, num)
        for output, (ids, num) in zip(run.outputs, requests, strict=True)
    ]
    scores, offset = [], 0
    for item in items:
        scores.append(flat[offset : offset + len(item["choices"])])
        offset += len(item["choices"])
    figures = accuracy(items, scores)
    result = {
        "eval": "choice",
        "settings": {"data": path, **settings(args, engine.model_path, ("limit",))},
        "num_items": len(items),
        "acc": figures["acc"],
        "acc_norm": figures["acc_norm"],
        "speed": speed_figures(run),
        "items": [
            {"line": item["_line"], "answer": item["answer"], "logprobs": item_scores} | pick
            for item, item_scores, pick in zip(items, scores, figures["picks"], strict=True)
        ],
    }
    rows = [["accuracy (acc)", result["acc"]], ["accuracy (acc_norm)", result["acc_norm"]]]
    rows += speed_rows(result["speed"])
    title = f"eval choice: {len(items)} items ({len(requests)} choices) from {path}"
    print_table(title, ["metric", "value"], rows)
    if args.output_json:
        write_json(args.output_json, result)
    return 0
