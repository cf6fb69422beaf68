"""Batches of Kafka events for agents that write to ClickHouse.

The agent iterates its stream event by event with acks disabled and hands full batches to a
handler; a timer hands over what waited longer than ``max_seconds``, counted from when the first
buffered message was written to Kafka (its timestamp) or, if that says less (a writer's clock
ahead of this one), from when it was buffered: a worker that is behind hands over what it
buffered at the next tick, instead of letting messages that already waited in Kafka wait
``max_seconds`` more. Events are acknowledged
only after the handler returned, so their offsets are committed only once their effects are
written. The buffer holds at most ``max_events`` Kafka messages and ``max_bytes`` of their values
(a message may carry hundreds of records): when it is full the agent waits for the flush, and
Kafka consumption pauses with it.

A rebalance ends a generation. Events received before it are still processed, but never
acknowledged: acknowledging them after the rebalance is unsafe, because faust may then commit past
offsets it re-delivered and nobody processed yet (its commit logic skips the gap check when the
partition's committed offset is not known), and a crash would lose those. Dropping them is not
safe either: faust does not always deliver them again. Processing without acknowledging loses
nothing: re-delivered events are written again, and the handlers are idempotent (warehouse rows
collapse, journey state ignores messageIds it has seen).

A handler may return an awaitable for the part of its work that only waits (its writes): the
next batch is then handled while that one is written, and a batch is acknowledged once its
awaitable is done, in order. At most ``IN_FLIGHT`` handled batches wait so; a failure of one
is raised in the agent, which stops the worker (nothing after it is acknowledged).

(faust's ``take``/``noack_take`` buffers were not used: on a rebalance they could be left waiting
on a future that nothing resolves, and the stream stalled.)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

# The handler's awaitable, if any, is what is left to wait for before the batch is acknowledged.
Handler = Callable[[list[Any]], Awaitable[Awaitable[None] | None]]

# Of message values buffered. A worker that is behind hands over a batch at each tick, up to
# this: the fewer batches, the fewer ClickHouse inserts and changelog sends per event (16 MiB
# gave 0.074-0.081 of the bare consumer in `tracker bench worker`, 8 MiB 0.052-0.064).
MAX_BYTES = 16 * 1024 * 1024
# Handled batches whose writes are awaited while the next one is handled. A write goes on only
# when the loop turns, and the loop does not turn while a batch is worked out: each of a batch's
# writes (two inserts, forwards, states) may wait a whole batch, so two in flight left the
# agent waiting on writes for a sixth of a run. At most IN_FLIGHT * MAX_BYTES of values held.
IN_FLIGHT = 8


class Batcher:
    def __init__(
        self, handler: Handler, *, max_events: int, max_seconds: float, max_bytes: int = MAX_BYTES
    ) -> None:
        self.handler = handler
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._bytes = 0
        self.max_seconds = max_seconds
        self._stream: Any = None
        self._buffer: list[tuple[int, Any]] = []  # (generation, event)
        self._since = 0.0  # monotonic time the first buffered event was buffered
        self._written = 0.0  # wall-clock time it was written to Kafka (its timestamp, seconds)
        self._flushing = asyncio.Lock()
        self._generation = 0
        # Handled batches not acknowledged yet, oldest first: (what to await, their events).
        self._in_flight: deque[tuple[asyncio.Future[None], list[tuple[int, Any]]]] = deque()

    async def consume(self, stream: Any) -> None:
        """The agent's body."""
        self._stream = stream
        async for event in stream.noack().events():
            if not self._buffer:
                self._since = time.monotonic()
                self._written = event.message.timestamp or 0.0
            self._buffer.append((self._generation, event))
            self._bytes += len(event.message.value or b"")
            if len(self._buffer) >= self.max_events or self._bytes >= self.max_bytes:
                await self.flush()

    async def tick(self) -> None:
        """Called from a timer: flush what has waited long enough; acknowledge what is written."""
        if self._buffer and self.waited() >= self.max_seconds:
            await self.flush()
        async with self._flushing:
            await self._ack_written(IN_FLIGHT, wait=False)

    def waited(self) -> float:
        """Seconds the oldest buffered message has waited: since it was written to Kafka, or
        since it was buffered if that is longer (0 with nothing buffered)."""
        if not self._buffer:
            return 0.0
        buffered = time.monotonic() - self._since
        return max(buffered, time.time() - self._written) if self._written else buffered

    def revoke(self) -> None:
        """A rebalance: nothing received so far will be acknowledged."""
        self._generation += 1

    async def flush(self) -> None:
        """Handle what is buffered; then wait until at most ``IN_FLIGHT`` batches are unwritten."""
        async with self._flushing:
            batch, self._buffer, self._bytes = self._buffer, [], 0
            if batch:
                left = await self.handler([event for _, event in batch])
                done = asyncio.ensure_future(left if left is not None else _nothing())
                self._in_flight.append((done, batch))
            await self._ack_written(IN_FLIGHT)

    async def drain(self) -> None:
        """Handle what is buffered and wait until every batch is written and acknowledged."""
        await self.flush()
        async with self._flushing:
            await self._ack_written(0)

    async def _ack_written(self, most: int, *, wait: bool = True) -> None:
        """Acknowledge written batches in order; with ``wait``, wait for the oldest until at most
        ``most`` are left. Events from before a rebalance are not acknowledged (see above)."""
        queue = self._in_flight
        while queue and (queue[0][0].done() or (wait and len(queue) > most)):
            done, batch = queue[0]
            await done  # raises the failure of the batch's writes
            queue.popleft()
            current = self._generation  # read now: a rebalance may have come since
            for generation, event in batch:
                if generation == current:
                    await self._stream.ack(event)


async def _nothing() -> None:
    return None
