"""The collector's listening socket: a deadline on request headers and a bound on connections.

aiohttp closes a connection that stays idle for its keep-alive timeout, but a client that sends
its headers one byte at a time is not idle, and nothing bounds how many such clients it keeps.
Here each request's headers must be complete within ``header_timeout`` of their first byte, and
at ``max_connections`` a new connection takes the place of the longest-open one that is waiting
for headers (idle or trickling); only when every connection is busy with a request is the new
one closed at once. A well-behaved client is therefore never shut out for longer than a request.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

# File descriptors left for everything that is not a client connection (Kafka, logs, files).
_RESERVED_FDS = 128


def usable_connections(wanted: int) -> int:
    """``wanted``, lowered to what the process's open-file limit can hold."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or wanted + _RESERVED_FDS <= soft:
        return wanted
    usable = max(1, soft - _RESERVED_FDS)
    log.warning("event=max_connections_lowered wanted=%d usable=%d nofile=%d", wanted, usable, soft)
    return usable


class Guard:
    """The connections of one listener, in the order they opened."""

    def __init__(self, *, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open: dict[Connection, None] = {}
        self.cut_slow = 0  # connections closed because their headers were late
        self.evicted = 0  # waiting connections closed to make room for a new one
        self.refused = 0  # new connections closed because every slot was busy

    def admit(self, conn: Connection) -> bool:
        if len(self.open) >= self.max_connections:
            waiting = next((c for c in self.open if c.waiting_for_headers), None)
            if waiting is None:
                self.refused += 1
                return False
            self.evicted += 1
            waiting.force_close()
            self.open.pop(waiting, None)
        self.open[conn] = None
        return True


class Connection(RequestHandler):
    """aiohttp's handler for one connection, with the guard's header deadline and bound."""

    def __init__(self, manager: web.Server, *, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._headers_due: asyncio.TimerHandle | None = None

    @property
    def waiting_for_headers(self) -> bool:
        """Between requests: no request queued or being handled (aiohttp's own state)."""
        return not self._messages and not self._request_in_progress

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._guard.admit(self):
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.open.pop(self, None)
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.waiting_for_headers:
            self._cancel_deadline()
        elif data and self._headers_due is None:
            self._headers_due = self._loop.call_later(self._guard.header_timeout, self._late)

    def _late(self) -> None:
        self._headers_due = None
        if self.waiting_for_headers:
            self._guard.cut_slow += 1
            log.info("event=slow_client_cut peer=%s", self.peername)
            self.force_close()

    def _cancel_deadline(self) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
            self._headers_due = None


async def listen(
    runner: web.AppRunner, host: str, port: int, guard: Guard, **handler_options: Any
) -> asyncio.Server:
    """Serve ``runner``'s application on ``host:port`` through :class:`Connection` handlers."""
    manager = runner.server
    assert manager is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()

    def connection() -> Connection:
        return Connection(manager, guard=guard, loop=loop, **handler_options)

    return await loop.create_server(connection, host, port, reuse_address=True, backlog=1024)
