"""Make kaon's INFO log (load progress) visible to a Python user who configured no logging.

Python shows only WARNING and above by default, so ``LLM()`` would load in silence. When neither
the root logger nor the ``kaon`` logger has a handler, a stderr handler is added to ``kaon`` at
``KAON_LOG_LEVEL`` (default INFO). An application's own logging configuration (``basicConfig``,
``kaon serve``'s, pytest's capture) takes precedence: nothing is added then.
"""

from __future__ import annotations

import logging
import sys

from kaon import envs

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def ensure_visible_logging() -> None:
    """Add the stderr handler to the ``kaon`` logger if no handler would print its records."""
    kaon_logger = logging.getLogger("kaon")
    if logging.getLogger().handlers or kaon_logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    kaon_logger.addHandler(handler)
    if kaon_logger.level == logging.NOTSET:
        kaon_logger.setLevel(envs.log_level())
