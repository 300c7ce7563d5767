"""Wires ``kaon eval <task>`` into the ``kaon`` command.

Each task module in ``_TASKS`` exposes ``add_parser(commands, add_cli_args)``, which adds its own
subcommand (with ``handler`` set) to the ``eval`` subparsers. A task whose module is missing is
skipped, so tasks can land one at a time.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

_TASKS = ("kaon.eval.perplexity", "kaon.eval.generate", "kaon.eval.choice")


def add_eval_commands(
    eval_parser: argparse.ArgumentParser, add_cli_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add one subcommand per evaluation task to the ``eval`` parser."""
    commands = eval_parser.add_subparsers(dest="eval_command", required=True)
    for module_name in _TASKS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.add_parser(commands, add_cli_args)
