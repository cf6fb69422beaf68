"""Batches of Kafka events for agents that write to ClickHouse.

The agent iterates its stream event by event with acks disabled and hands full batches to a
handler; a timer hands over what waited longer than ``max_seconds``. Events are acknowledged
only after the handler returned, so their offsets are committed only once their effects are
written. The buffer holds at most ``max_events``: when it is full the agent waits for the flush,
and Kafka consumption pauses with it.

A rebalance ends a generation: the events buffered before it are dropped unacknowledged, and a
batch whose handler was running across it is not acknowledged either. faust reads those events
again from the committed offsets. Acknowledging them after the rebalance would be unsafe: faust
may then commit past offsets it re-delivered but nobody processed yet (its commit logic skips the
gap check when the partition's committed offset is not known), and a crash would lose them.
The handlers tolerate the re-delivery: warehouse writes and journey state are idempotent.

(faust's ``take``/``noack_take`` buffers were not used: on a rebalance they could be left waiting
on a future that nothing resolves, and the stream stalled.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[[list[Any]], Awaitable[None]]


class Batcher:
    def __init__(self, handler: Handler, *, max_events: int, max_seconds: float) -> None:
        self.handler = handler
        self.max_events = max_events
        self.max_seconds = max_seconds
        self._stream: Any = None
        self._buffer: list[Any] = []
        self._since = 0.0
        self._flushing = asyncio.Lock()
        self._generation = 0

    async def consume(self, stream: Any) -> None:
        """The agent's body."""
        self._stream = stream
        async for event in stream.noack().events():
            if not self._buffer:
                self._since = time.monotonic()
            self._buffer.append(event)
            if len(self._buffer) >= self.max_events:
                await self.flush()

    async def tick(self) -> None:
        """Called from a timer: flush what has waited long enough."""
        if self._buffer and time.monotonic() - self._since >= self.max_seconds:
            await self.flush()

    def revoke(self) -> None:
        """Partitions are being taken away: forget what is buffered, ack nothing in flight."""
        self._generation += 1
        self._buffer = []

    async def flush(self) -> None:
        async with self._flushing:
            events, self._buffer = self._buffer, []
            if not events:
                return
            generation = self._generation
            await self.handler(events)
            if generation != self._generation:
                return  # a rebalance happened meanwhile: faust delivers these again
            for event in events:
                await self._stream.ack(event)
