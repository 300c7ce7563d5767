"""StructuredOutputRequest: one request's grammar matcher (llguidance ``LLMatcher``).

The scheduler drives it through the protocol in ``kaon/request.py``: ``is_ready`` while the
grammar compiles, ``accept_token`` for every sampled token, ``rollback`` for tokens taken back.
Preemption with recompute keeps a request's generated tokens, so the matcher keeps its state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future

import llguidance

logger = logging.getLogger("kaon")


class StructuredOutputRequest:
    """The matcher of one request, created from a compiled template once the compile is done.

    The template (cached and shared between requests with the same constraint) is never
    advanced; each request advances its own ``deep_copy``.
    """

    def __init__(
        self,
        request_id: str,
        template: Future[llguidance.LLMatcher],
        fence: Callable[[], None] | None = None,
    ) -> None:
        self.request_id = request_id
        self._template = template
        # Waits for the manager's bitmask fill in flight: it may be reading this matcher.
        self._fence = fence
        self._matcher: llguidance.LLMatcher | None = None
        self._failed = False  # the compile raised
        self.num_accepted_tokens = 0
        # Why the grammar could not go on (compile failure, a token it rejected): the request
        # then fails (HTTP 500 naming this) instead of finishing with unchecked text.
        self.error: str | None = None

    def is_ready(self) -> bool:
        """True once the grammar is compiled (the request may then be scheduled)."""
        return self._template.done()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the grammar is compiled (benchmarks and tests; the engine never waits).

        Raises:
            TimeoutError: after ``timeout`` seconds.
        """
        self._template.result(timeout)

    @property
    def matcher(self) -> llguidance.LLMatcher | None:
        """The request's matcher, or None when the compile raised (the request then ends at its
        next token). Only call once ``is_ready()``."""
        if self._fence is not None:
            self._fence()
        if self._matcher is None and not self._failed:
            assert self._template.done(), "grammar still compiling"
            try:
                self._matcher = self._template.result().deep_copy()
            except Exception as error:  # never take the engine down for one request's grammar
                logger.exception("request %s: grammar compile failed", self.request_id)
                self._failed = True
                self.error = f"grammar compile failed: {error}"
        return self._matcher

    def accept_token(self, token_id: int) -> bool:
        """Advance the matcher by one sampled token. Returns True when generation must end:
        the grammar is complete and allows nothing more, or it cannot go on (``error`` set: the
        compile failed, or the token was rejected, which the mask prevents unless the grammar
        allows no token at all or hits a limit of llguidance's parser); logged."""
        matcher = self.matcher
        if matcher is None:
            return True
        if not matcher.consume_token(token_id) or matcher.is_error():
            reason = _first_line(matcher.get_error())
            logger.warning(
                "request %s: token %d rejected by its grammar (%s)",
                self.request_id, token_id, reason,
            )  # fmt: skip
            self.error = f"the output could not follow its grammar: {reason}"
            return True
        self.num_accepted_tokens += 1
        return matcher.is_stopped()

    def rollback(self, num_tokens: int) -> None:
        """Take back the last ``num_tokens`` accepted tokens (e.g. rejected draft tokens)."""
        if num_tokens <= 0 or self.matcher is None:
            return
        assert num_tokens <= self.num_accepted_tokens, "rollback past the first token"
        self.matcher.rollback(num_tokens)  # type: ignore[union-attr]
        self.num_accepted_tokens -= num_tokens

    def reset(self) -> None:
        """Back to the start of the grammar (all accepted tokens dropped)."""
        if self.matcher is not None:
            self.matcher.reset()
        self.num_accepted_tokens = 0

    def is_terminated(self) -> bool:
        """True when the grammar allows no further token (complete, or in an error state)."""
        return self.matcher is None or self.matcher.is_stopped()


def _first_line(error: str) -> str:
    """llguidance's error text, shortened to its first line (it appends a state dump)."""
    line = error.strip().splitlines()[0].strip() if error.strip() else ""
    if not line or line == "NoExtensionBias":  # the mask allowed no token but end-of-sequence
        return "no token can extend the output here (the grammar matches nothing from this point)"
    return line
