"""``kaon serve --data-parallel-size N`` (N > 1): the front process and its replicas' argv.

The front loads only the tokenizer (from the GGUF / Hugging Face metadata, no weights) and
starts N ``kaon serve`` replicas on loopback ports, each with ``num_threads`` torch threads
(default: the usable cores split evenly, at least 1), the same engine options and the same API
key. SIGTERM: uvicorn drains in-flight requests (``--shutdown-timeout``), then the lifespan
hook stops every replica (SIGTERM, then SIGKILL); the front exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import uvicorn

from kaon.config import EngineConfig
from kaon.entrypoints.openai.cli_args import check_port_free
from kaon.entrypoints.openai.cors import CORSOptions
from kaon.entrypoints.router.policy import Router
from kaon.entrypoints.router.proxy import build_router_app
from kaon.entrypoints.router.replica import ReplicaPool
from kaon.entrypoints.router.request_info import RequestInspector
from kaon.entrypoints.web import page_url

logger = logging.getLogger("kaon")

_PER_REPLICA = ("data_parallel_size", "num_threads")  # set by the front for each replica


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def replica_threads(num_threads: int | None, data_parallel_size: int) -> int:
    """Torch threads per replica: the user's ``num_threads``, else cores // replicas (>= 1)."""
    return num_threads or max(1, usable_cores() // data_parallel_size)


def replica_command(
    options: dict[str, Any], args: argparse.Namespace, num_threads: int
) -> list[str]:
    """The argv of one replica (``--port`` is appended per process): the front's engine options
    with ``--data-parallel-size 1``, and the server options that shape a replica's answers."""
    argv = [sys.executable, "-m", "kaon", "serve", "--host", "127.0.0.1", "--no-access-log"]
    for name, value in options.items():
        if name in _PER_REPLICA or value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        else:
            argv += [flag, str(value)]
    argv += ["--data-parallel-size", "1", "--num-threads", str(num_threads)]
    argv += ["--max-waiting-requests", str(args.max_waiting_requests)]
    argv += ["--shutdown-timeout", str(args.shutdown_timeout)]
    argv += ["--max-request-bytes", str(args.max_request_bytes)]
    if args.served_model_name:
        argv += ["--served-model-name", *args.served_model_name]
    if args.log_level:
        argv += ["--log-level", args.log_level]
    if args.api_key is not None:
        argv += ["--api-key", args.api_key]
    return argv


def load_tokenizer(model: str | None):
    """The model's ``kaon.tokenizer.Tokenizer`` without its weights.

    Raises:
        FileNotFoundError: the model path does not exist.
    """
    from kaon.tokenizer import Tokenizer, read_gguf_metadata

    if model is None:
        from kaon.models.loader.default_model import default_model_path

        model = default_model_path()
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"model path {model} does not exist")
    if path.is_dir():
        return Tokenizer.from_hf_dir(path)
    return Tokenizer.from_gguf(read_gguf_metadata(path))


def run_router(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """Serve one OpenAI endpoint over ``data_parallel_size`` replicas until SIGTERM / Ctrl-C.

    Raises:
        ValueError: naming a bad engine or server option (before any replica starts).
        FileNotFoundError: the model path does not exist.
    """
    config = EngineConfig.from_options(**options)  # bad options fail here, not N times
    num_replicas = config.parallel_config.data_parallel_size
    num_threads = replica_threads(config.parallel_config.num_threads, num_replicas)
    check_port_free(args.host, args.port)
    tokenizer = load_tokenizer(config.model_config.model)
    command = replica_command(options, args, num_threads)
    logger.info("data parallel: %d replicas x %d threads", num_replicas, num_threads)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per health probe
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    pool = ReplicaPool(command, Router(num_replicas), headers=headers)
    inspector = RequestInspector(tokenizer, config.cache_config.block_size, max_model_len=0)
    cors = CORSOptions.from_args(args)
    app = build_router_app(
        pool, inspector, args.api_key, args.shutdown_timeout, cors, args.max_request_bytes
    )
    logger.info("chat page at %s", page_url(args.host, args.port))
    log_level = (args.log_level or logging.getLevelName(logger.getEffectiveLevel())).lower()
    server_config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=log_level, log_config=None,
        access_log=args.access_log, timeout_graceful_shutdown=args.shutdown_timeout,
    )  # fmt: skip
    server = uvicorn.Server(server_config)
    # As in run_server: a no-op handler lets a graceful SIGTERM stop exit 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        pool.kill_all()  # only does something if the lifespan never got to stop them
    if not server.started:
        logger.error("the data-parallel front did not start (see the replica errors above)")
        return 1
    logger.info("server stopped")
    return 0
