"""The ``kaon`` command: serve | generate | chat | bench | eval | batch.

Engine flags (``--max-num-seqs``, ``--kv-cache-memory-bytes``, ...) come from the config classes,
so they are the same for every subcommand and match the Python options and vLLM's names.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from kaon import envs
from kaon.config import EngineConfig, add_cli_args, options_from_cli, single_engine_options

# Nothing here imports torch or the engine at module level: `kaon --help` and argument errors
# answer in well under a second; each handler imports what it runs.


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    group.add_argument("--top-p", type=float, default=1.0)
    group.add_argument("--top-k", type=int, default=0)
    group.add_argument(
        "--max-tokens", type=int, default=128, help="tokens to generate (default 128)"
    )
    group.add_argument(
        "--sampling-seed", type=int, default=None, help="per-request seed (--seed seeds the engine)"
    )
    group.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def _sampling_params(args: argparse.Namespace):
    from kaon.sampling_params import SamplingParams

    return SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        seed=args.sampling_seed,
        stop=args.stop,
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    params = _sampling_params(args)  # bad sampling flags fail before torch and the model load
    from kaon.entrypoints.llm import LLM

    llm = LLM(**options_from_cli(args))
    if args.chat_template:
        conversations = [[{"role": "user", "content": prompt}] for prompt in args.prompts]
        outputs = llm.chat(conversations, params, use_tqdm=len(args.prompts) > 1)
    else:
        outputs = llm.generate(args.prompts, params, use_tqdm=len(args.prompts) > 1)
    for prompt, output in zip(args.prompts, outputs, strict=True):
        if len(args.prompts) > 1:
            print(f"=== {prompt}")
        print(output.outputs[0].text)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    options = single_engine_options(args, "kaon chat")
    params = _sampling_params(args)
    from kaon.entrypoints.chat import run_chat

    return run_chat(options, params, args.system)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaon", description="LLM inference engine and server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    add_cli_args(serve)
    try:
        from kaon.entrypoints.openai.cli_args import add_server_args

        add_server_args(serve)
    except ImportError:  # the server package is optional at import time
        pass
    serve.set_defaults(handler=_cmd_serve)

    generate = sub.add_parser(
        "generate", help="generate for one or more prompts and print the text"
    )
    generate.add_argument("prompts", nargs="+", help="prompt text(s)")
    generate.add_argument(
        "--chat-template", action=argparse.BooleanOptionalAction, default=True,
        help="wrap each prompt as a user message with the model's chat template (default: on)",
    )  # fmt: skip
    add_cli_args(generate)
    _add_sampling_args(generate)
    generate.set_defaults(handler=_cmd_generate)

    chat = sub.add_parser("chat", help="interactive multi-turn chat in the terminal")
    chat.add_argument("--system", default=None, help="system prompt")
    add_cli_args(chat)
    _add_sampling_args(chat)
    chat.set_defaults(handler=_cmd_chat, max_tokens=512)

    bench = sub.add_parser("bench", help="benchmarks: throughput, latency")
    try:
        from kaon.benchmarks.cli import add_bench_commands

        add_bench_commands(bench, add_cli_args)
    except ImportError:
        pass

    evaluate = sub.add_parser("eval", help="accuracy: perplexity, generation (EM/F1), choice")
    from kaon.eval.cli import add_eval_commands

    add_eval_commands(evaluate, add_cli_args)

    batch = sub.add_parser("batch", help="JSONL in, JSONL out, over a Dask cluster (resumable)")
    from kaon.batch.cli import add_batch_args

    add_batch_args(batch, add_cli_args, _add_sampling_args, _sampling_params)
    return parser


def _cmd_serve(args: argparse.Namespace) -> int:
    from kaon.entrypoints.serve import serve

    return serve(args)


def _check_arguments(args: argparse.Namespace) -> None:
    """Errors a command would hit only after importing torch and loading the model: engine
    option ranges, a model path that does not exist, missing optional packages.

    Raises:
        ValueError: naming the option (or the package and its install command).
        FileNotFoundError: naming the model path.
    """
    if hasattr(args, "max_num_seqs"):  # the command loads an engine: --model is a path
        EngineConfig.from_options(**options_from_cli(args))
        model = getattr(args, "model", None)
        if model is not None and not os.path.exists(model):
            raise FileNotFoundError(f"model path {model} does not exist")
    check = getattr(args, "check_dependencies", None)
    if check is not None:
        check(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", None) or envs.log_level(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        _check_arguments(args)
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"kaon: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
