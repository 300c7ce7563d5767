"""``kaon eval perplexity``: perplexity of a model (and a weight quantization) on a text file.

    PPL = exp( -1/N * sum_i log p(x_i | x_{<i}) )

over the file's tokens, evaluated in fixed windows of ``window`` tokens that start every
``stride`` tokens; each token is scored once, in the first window that covers it, with the
preceding tokens of that window as context (the sliding-window evaluation of Hugging Face's
"Perplexity of fixed-length models" guide). ``stride == window`` gives disjoint windows; a smaller
stride gives each scored token more context at more compute. The first token of the text has no
context and is not scored.

The log-probabilities come from the engine itself: every window is a token-id prompt sent through
``LLM.generate`` with ``prompt_logprobs=0`` and ``max_tokens=1``, so the model runner's real
prefill path (chunked prefill, paged KV cache, quantized linear layers) computes them.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class PerplexityResult:
    num_tokens: int  # tokens scored
    mean_nll: float  # nats per token
    perplexity: float
    seconds: float  # wall time of the engine calls

    @property
    def tokens_per_second(self) -> float:
        return self.num_tokens / self.seconds if self.seconds > 0 else float("inf")


def sliding_windows(
    num_tokens: int, window: int, stride: int, with_bos: bool = False
) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) token positions per window; positions first_scored..end-1 are
    scored by that window, and together the windows score 1..num_tokens-1 exactly once
    (0..num_tokens-1 ``with_bos``: each window then has a BOS token before ``begin`` as context).

    Raises:
        ValueError: naming ``window`` (< 2), ``stride`` (< 1 or > window) or the text (< 2 tokens).
    """
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    if num_tokens < 2:
        raise ValueError(f"the text must have at least 2 tokens, got {num_tokens}")
    context = 0 if with_bos else 1  # tokens a window needs before its first scored one
    windows, scored_end = [], context
    for begin in range(0, num_tokens, stride):
        end = min(begin + window, num_tokens)
        windows.append((begin, end, max(scored_end, begin + context)))
        scored_end = end
        if end == num_tokens:
            break
    return windows


def window_bos_token_id(tokenizer) -> int | None:
    """The token each window starts with: the tokenizer's BOS id when it adds one by default
    (``add_bos_token``), else None (no prefix)."""
    return tokenizer.bos_token_id if tokenizer.add_bos_token else None


def evaluate_perplexity(
    llm, token_ids: list[int], window: int, stride: int, bos_token_id: int | None = None
) -> PerplexityResult:
    """Perplexity of ``llm`` (a ``kaon.LLM``) on ``token_ids`` with the given windows; with
    ``bos_token_id`` every window's prompt is that token followed by its ``window`` text tokens.

    Raises:
        ValueError: as ``sliding_windows``; or from the engine, when a prompt exceeds
        max_model_len - 1 tokens.
    """
    from kaon.sampling_params import SamplingParams

    with_bos = bos_token_id is not None
    windows = sliding_windows(len(token_ids), window, stride, with_bos)
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    prefix = [bos_token_id] if with_bos else []
    prompts = [prefix + token_ids[begin:end] for begin, end, _ in windows]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    total_nll, count = 0.0, 0
    for (begin, end, first), output in zip(windows, outputs, strict=True):
        positions = output.prompt_logprobs or []
        for position in range(first, end):
            entry = positions[position - begin + len(prefix)]
            target = token_ids[position]
            total_nll -= entry[target].logprob
            count += 1
    mean_nll = total_nll / count
    return PerplexityResult(count, mean_nll, math.exp(mean_nll), seconds)


def add_parser(commands, add_cli_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``perplexity`` to the ``kaon eval`` subcommands."""
    parser = commands.add_parser(
        "perplexity", help="perplexity of the model on a text file (sliding windows)"
    )
    parser.add_argument("file", help="a UTF-8 text file")
    parser.add_argument("--window", type=int, default=2048, help="context window in tokens")
    parser.add_argument(
        "--stride", type=int, default=None, help="tokens between window starts (default: window)"
    )
    parser.add_argument(
        "--num-tokens", type=int, default=None, help="evaluate only the first N tokens of the file"
    )
    parser.add_argument(
        "--no-bos",
        action="store_true",
        help="do not start each window with BOS even where the tokenizer adds one",
    )
    add_cli_args(parser)
    parser.set_defaults(handler=_cmd_perplexity)


def _cmd_perplexity(args: argparse.Namespace) -> int:
    from kaon.config import options_from_cli
    from kaon.entrypoints.llm import LLM

    with open(args.file, encoding="utf-8") as handle:
        text = handle.read()
    options = options_from_cli(args)
    if options.get("max_model_len") is None:
        # the window, a BOS token and the one sampled token
        options["max_model_len"] = args.window + 2
    llm = LLM(**options)
    tokenizer = llm.tokenizer
    bos = None if args.no_bos else window_bos_token_id(tokenizer)
    token_ids = tokenizer.encode(text, add_special_tokens=False)
    if args.num_tokens is not None:
        token_ids = token_ids[: args.num_tokens]
    stride = args.stride or args.window
    result = evaluate_perplexity(llm, token_ids, args.window, stride, bos)
    print(f"file:              {args.file}")
    print(f"quantization:      {options.get('quantization', 'none')}"
          f" (dtype {options.get('dtype', 'auto')})")  # fmt: skip
    print(f"window / stride:   {args.window} / {stride} tokens")
    print(f"BOS per window:    {'no' if bos is None else f'yes (id {bos})'}")
    print(f"tokens evaluated:  {result.num_tokens}")
    print(f"mean NLL:          {result.mean_nll:.4f} nats/token")
    print(f"perplexity:        {result.perplexity:.3f}")
    print(f"throughput:        {result.tokens_per_second:.1f} tokens/s ({result.seconds:.1f} s)")
    return 0
