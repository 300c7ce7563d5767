"""``kaon eval generate``: greedy answers scored by exact match and token F1 (SQuAD style).

Each JSONL line holds ``"prompt"`` (a string) or ``"messages"`` (chat messages), and
``"answers"``: a non-empty list of reference answers. Prompts are wrapped as a user message with
the model's chat template unless ``--no-chat-template``; messages always use it. The prediction
is the first non-empty line of the greedy output, stripped. Scores are means over items of the
maximum over each item's references (``kaon.eval.metrics``); throughput and latency come from the
same run (every item queued at once).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from kaon.benchmarks.common import print_table, run_requests, settings, write_json
from kaon.eval.common import add_common_args, packaged_data, read_jsonl, speed_figures, speed_rows
from kaon.eval.metrics import best_over_references

DEFAULT_DATA = "qa.jsonl"


def add_parser(
    commands: argparse._SubParsersAction, add_cli_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add ``generate`` to the ``kaon eval`` subcommands."""
    parser = commands.add_parser("generate", help="greedy answers: exact match and token F1")
    add_common_args(parser, DEFAULT_DATA)
    parser.add_argument("--max-tokens", type=int, default=32, help="per answer (default 32)")
    parser.add_argument(
        "--chat-template",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wrap a 'prompt' as a user message with the chat template (default: on)",
    )
    add_cli_args(parser)
    parser.set_defaults(handler=run_generate)


def parse_items(records: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """Validate records: a string "prompt" or a list "messages", and a non-empty list of
    string "answers".

    Raises:
        ValueError: naming the line and the field.
    """
    for record in records:
        where = f"data {path} line {record['_line']}"
        has_prompt = isinstance(record.get("prompt"), str)
        if not has_prompt and not isinstance(record.get("messages"), list):
            raise ValueError(f"{where}: needs a string 'prompt' or a list 'messages'")
        answers = record.get("answers")
        if not isinstance(answers, list) or not answers:
            raise ValueError(f"{where}: 'answers' must be a non-empty list")
        if not all(isinstance(answer, str) for answer in answers):
            raise ValueError(f"{where}: 'answers' must hold strings")
    return records


def prediction(text: str) -> str:
    """The first non-empty line of a generated text, stripped ("" when there is none)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _prompt(item: dict[str, Any], tokenizer: Any, chat_template: bool) -> str:
    if "messages" in item and not isinstance(item.get("prompt"), str):
        return tokenizer.apply_chat_template(item["messages"], add_generation_prompt=True)
    if chat_template:
        messages = [{"role": "user", "content": item["prompt"]}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return item["prompt"]


def score(predictions: list[str], items: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean exact match and token F1 (max over each item's answers), and per-item scores."""
    per_item = [
        {
            "em": best_over_references(pred, item["answers"], "em"),
            "f1": best_over_references(pred, item["answers"], "f1"),
        }
        for pred, item in zip(predictions, items, strict=True)
    ]
    return {
        "exact_match": sum(s["em"] for s in per_item) / len(per_item),
        "f1": sum(s["f1"] for s in per_item) / len(per_item),
        "per_item": per_item,
    }


def run_generate(args: argparse.Namespace) -> int:
    """Handler of ``kaon eval generate``; returns the exit code."""
    from kaon.config import single_engine_options
    from kaon.entrypoints.llm import LLM
    from kaon.sampling_params import SamplingParams

    if args.max_tokens < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError("--max-tokens and --limit must be >= 1")
    path = args.data or packaged_data(DEFAULT_DATA)
    items = parse_items(read_jsonl(path, args.limit), path)
    llm = LLM(**single_engine_options(args, "kaon eval generate"))
    engine = llm.engine
    prompts = [_prompt(item, engine.tokenizer, args.chat_template) for item in items]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    run = run_requests(engine, prompts, params, "eval-generate", progress_desc="generate")
    texts = [output.outputs[0].text for output in run.outputs]
    predictions = [prediction(text) for text in texts]
    scores = score(predictions, items)
    result = {
        "eval": "generate",
        "settings": {
            "data": path,
            **settings(args, engine.model_path, ("limit", "max_tokens", "chat_template")),
        },
        "num_items": len(items),
        "exact_match": scores["exact_match"],
        "f1": scores["f1"],
        "speed": speed_figures(run),
        "items": [
            {"line": item["_line"], "answers": item["answers"], "output": text, "prediction": pred}
            | item_score
            for item, text, pred, item_score in zip(
                items, texts, predictions, scores["per_item"], strict=True
            )
        ],
    }
    rows = [["exact match", result["exact_match"]], ["token F1", result["f1"]]]
    rows += speed_rows(result["speed"])
    print_table(f"eval generate: {len(items)} items from {path}", ["metric", "value"], rows)
    if args.output_json:
        write_json(args.output_json, result)
    return 0
