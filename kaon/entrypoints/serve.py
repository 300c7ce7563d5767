"""``kaon serve``: one engine in this process (``openai.api_server``), or, with
``--data-parallel-size N`` > 1, a front that routes over N replica processes (``router.server``).
"""

from __future__ import annotations

import argparse

from kaon.entrypoints.openai.cli_args import serve_options


def serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / Ctrl-C; returns the exit code (0 after a graceful stop, 1 after an
    engine error).

    Raises:
        ValueError: naming a bad engine or server option (the CLI prints it and exits 2).
        FileNotFoundError: the model path does not exist.
    """
    options = serve_options(args)
    if options.get("data_parallel_size", 1) > 1:
        from kaon.entrypoints.router.server import run_router

        return run_router(args, options)
    from kaon.entrypoints.openai.api_server import run_server

    return run_server(args, options)
