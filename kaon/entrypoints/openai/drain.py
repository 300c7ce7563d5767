"""How ``kaon serve`` stops: a graceful drain on SIGTERM, an exit with status 1 after an engine
death (so a supervisor restarts it).

SIGTERM, with ``--shutdown-timeout T``:

    t = 0   uvicorn stops accepting connections; in-flight requests keep running
    t = T   the requests still running are failed: a non-streaming client gets 503 with the
            error envelope (code engine_unavailable), a stream an SSE error event then
            ``data: [DONE]``; their KV blocks are freed
    t = T + _RESPONSE_GRACE_S at most: uvicorn cancels what is left, the engine stops, exit 0

Engine death (a step raised): every in-flight request gets 503 / an SSE error at once, every
endpoint but /metrics answers 503 (RequestGuardMiddleware); after ``_DEAD_EXIT_DELAY_S`` the
server drains as above and the process exits with status 1.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn

from kaon.engine.async_llm import AsyncLLM

logger = logging.getLogger("kaon")

_RESPONSE_GRACE_S = 2.0  # time failed requests get to write their 503 / SSE error
_DEAD_EXIT_DELAY_S = 2.0  # probes see the 503 for this long before the server stops


class DrainingServer(uvicorn.Server):
    """uvicorn.Server that fails the requests still running when the shutdown timeout expires
    (instead of cancelling their tasks, which cuts the responses), and stops after an engine
    death."""

    def __init__(self, config: uvicorn.Config, async_llm: AsyncLLM, shutdown_timeout: float):
        config.timeout_graceful_shutdown = shutdown_timeout + _RESPONSE_GRACE_S
        super().__init__(config)
        self.async_llm = async_llm
        self.shutdown_timeout = shutdown_timeout
        async_llm.on_dead = self._on_engine_dead

    @property
    def engine_died(self) -> bool:
        return self.async_llm.error is not None

    def _on_engine_dead(self) -> None:
        logger.error("the engine died; the server stops in %.0f s (exit status 1)",
                     _DEAD_EXIT_DELAY_S)  # fmt: skip
        asyncio.get_running_loop().call_later(_DEAD_EXIT_DELAY_S, self._request_exit)

    def _request_exit(self) -> None:
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        expire = asyncio.get_running_loop().call_later(self.shutdown_timeout, self._expire)
        try:
            await super().shutdown(sockets)
        finally:
            expire.cancel()

    def _expire(self) -> None:
        count = self.async_llm.num_requests_in_flight
        if count:
            logger.warning("shutdown timeout (%.1f s) expired: failing %d request(s) still "
                           "running", self.shutdown_timeout, count)  # fmt: skip
            self.async_llm.fail_all("the server is shutting down (shutdown timeout expired)")
