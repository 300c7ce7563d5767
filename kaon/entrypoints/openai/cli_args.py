"""``kaon serve`` flags that are about the HTTP server (engine flags come from kaon.config)."""

from __future__ import annotations

import argparse
import socket
from typing import Any

from kaon.config import options_from_cli
from kaon.entrypoints.openai.cors import add_cors_args

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """Add the server flags and an optional positional model (``kaon serve MODEL``)."""
    parser.add_argument(
        "model_tag", nargs="?", default=None, metavar="MODEL",
        help="a .gguf file or Hugging Face directory (same as --model)",
    )  # fmt: skip
    group = parser.add_argument_group("server options")
    group.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    group.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    group.add_argument(
        "--api-key", default=None,
        help="require 'Authorization: Bearer KEY' on /v1/* and the tokenizer endpoints",
    )  # fmt: skip
    group.add_argument(
        "--served-model-name", nargs="+", default=None, metavar="NAME",
        help="model name(s) clients send in 'model'; the first is reported in responses "
        "(default: the model file's name, e.g. SmolLM2-135M-Instruct)",
    )  # fmt: skip
    group.add_argument(
        "--log-level", type=str.upper, choices=_LOG_LEVELS, default=None,
        help="logging level (default: KAON_LOG_LEVEL or INFO)",
    )  # fmt: skip
    group.add_argument(
        "--max-waiting-requests", type=int, default=256,
        help="requests allowed to wait beyond max_num_seqs; more get HTTP 429 (default: 256)",
    )  # fmt: skip
    group.add_argument(
        "--shutdown-timeout", type=float, default=30.0,
        help="seconds in-flight requests may take to finish after SIGTERM (default: 30)",
    )  # fmt: skip
    group.add_argument(
        "--max-request-bytes", type=int, default=8 * 2**20,
        help="largest request body accepted, in bytes; larger ones get HTTP 413 (default: 8 MiB)",
    )  # fmt: skip
    group.add_argument(
        "--no-access-log", dest="access_log", action="store_false",
        help="do not log one line per HTTP request",
    )  # fmt: skip
    add_cors_args(parser)


def validate_server_args(args: argparse.Namespace) -> None:
    """Raises ValueError naming a server flag whose value is out of range."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"port must be in [0, 65535], got {args.port}")
    if args.max_waiting_requests < 0:
        raise ValueError(f"max_waiting_requests must be >= 0, got {args.max_waiting_requests}")
    if args.shutdown_timeout < 0:
        raise ValueError(f"shutdown_timeout must be >= 0, got {args.shutdown_timeout}")
    if args.max_request_bytes < 1:
        raise ValueError(f"max_request_bytes must be >= 1, got {args.max_request_bytes}")
    if args.api_key is not None and not args.api_key:
        raise ValueError("api_key must not be empty")


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options of ``kaon serve`` after checking the server flags; a positional
    ``MODEL`` is the same as ``--model``.

    Raises:
        ValueError: naming a bad server flag, or MODEL and --model that disagree.
    """
    validate_server_args(args)
    options = options_from_cli(args)
    if args.model_tag is not None:
        if options.get("model") not in (None, args.model_tag):
            raise ValueError("model: given both as MODEL and --model with different values")
        options["model"] = args.model_tag
    return options


def check_port_free(host: str, port: int) -> None:
    """Raises ValueError naming ``port`` when host:port cannot be bound (checked before the
    model loads, so a busy port fails in a second)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ValueError(f"port: cannot listen on {host}:{port}: {error.strerror}") from None
