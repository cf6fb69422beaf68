"""The worker's Batcher hands over a batch at its message bound or at its byte bound, and
acknowledges a batch only once its writes are done, in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from streams.batching import IN_FLIGHT, Batcher


class _Stream:
    """The part of a faust stream the Batcher uses: events without acks, and ack."""

    def __init__(self, values: list[bytes], written: float | None = None) -> None:
        self.values = values
        self.written = written  # the messages' Kafka timestamp (seconds); None: now
        self.acked: list[Any] = []

    def noack(self) -> _Stream:
        return self

    async def events(self) -> AsyncIterator[Any]:
        for offset, value in enumerate(self.values):
            written = time.time() if self.written is None else self.written
            message = SimpleNamespace(value=value, offset=offset, timestamp=written)
            yield SimpleNamespace(message=message)

    async def ack(self, event: Any) -> None:
        self.acked.append(event.message.offset)


async def _batches(values: list[bytes], **bounds: Any) -> tuple[list[list[int]], list[int]]:
    sizes: list[list[int]] = []

    async def handler(events: list[Any]) -> None:
        sizes.append([len(e.message.value) for e in events])

    stream = _Stream(values)
    batcher = Batcher(handler, max_seconds=60, **bounds)
    await asyncio.wait_for(batcher.consume(stream), timeout=5)
    await batcher.drain()
    return sizes, stream.acked


async def test_a_batch_closes_at_its_byte_bound() -> None:
    sizes, acked = await _batches([b"x" * 400] * 10, max_events=1000, max_bytes=1000)
    assert sizes == [[400] * 3, [400] * 3, [400] * 3, [400]]
    assert acked == list(range(10))


async def test_a_batch_closes_at_its_message_bound() -> None:
    sizes, acked = await _batches([b"x"] * 5, max_events=2, max_bytes=1 << 20)
    assert sizes == [[1, 1], [1, 1], [1]]
    assert acked == list(range(5))


async def test_events_from_before_a_rebalance_are_handled_but_not_acknowledged() -> None:
    handled: list[int] = []
    stream = _Stream([b"a", b"b", b"c"])
    batcher = Batcher(lambda events: _record(handled, events), max_events=10, max_seconds=60)
    await asyncio.wait_for(batcher.consume(stream), timeout=5)
    batcher.revoke()
    await batcher.flush()
    assert handled == [0, 1, 2]
    assert stream.acked == []


async def _record(handled: list[int], events: list[Any]) -> None:
    handled += [e.message.offset for e in events]


class _Writes:
    """A handler whose batches are written when the test says so: one future per batch."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[None]] = []
        self.handled = asyncio.Event()  # set at each batch handled

    async def handler(self, events: list[Any]) -> asyncio.Future[None]:
        self.futures.append(asyncio.get_running_loop().create_future())
        self.handled.set()
        return self.futures[-1]

    async def consumed(self, values: list[bytes]) -> tuple[Batcher, _Stream]:
        stream = _Stream(values)
        batcher = Batcher(self.handler, max_events=1, max_seconds=60)
        await asyncio.wait_for(batcher.consume(stream), timeout=5)
        return batcher, stream


async def test_a_batch_is_acknowledged_once_its_writes_are_done_and_in_order() -> None:
    writes = _Writes()
    batcher, stream = await writes.consumed([b"a", b"b"])
    assert len(writes.futures) == 2  # the second batch was handled while the first was written
    await batcher.tick()
    assert stream.acked == []
    writes.futures[1].set_result(None)  # the second is written first: it waits for the first
    await batcher.tick()
    assert stream.acked == []
    writes.futures[0].set_result(None)
    await batcher.tick()
    assert stream.acked == [0, 1]


async def test_at_most_in_flight_batches_wait_for_their_writes() -> None:
    writes = _Writes()
    count = IN_FLIGHT + 1
    stream = _Stream([b"%d" % i for i in range(count)])
    batcher = Batcher(writes.handler, max_events=1, max_seconds=60)
    consuming = asyncio.ensure_future(batcher.consume(stream))
    while len(writes.futures) < count:
        writes.handled.clear()
        await asyncio.wait_for(writes.handled.wait(), timeout=5)
    assert not consuming.done()  # the last batch waits for the first one's writes
    writes.futures[0].set_result(None)
    await asyncio.wait_for(consuming, timeout=5)
    assert stream.acked == [0]
    for write in writes.futures[1:]:
        write.set_result(None)
    await batcher.drain()
    assert stream.acked == list(range(count))


async def test_a_failed_write_is_raised_and_nothing_after_it_is_acknowledged() -> None:
    writes = _Writes()
    batcher, stream = await writes.consumed([b"a", b"b"])
    writes.futures[1].set_result(None)
    writes.futures[0].set_exception(RuntimeError("the warehouse is gone"))
    try:
        await batcher.drain()
    except RuntimeError as exc:
        assert str(exc) == "the warehouse is gone"
    else:
        raise AssertionError("the failed write was not raised")
    assert stream.acked == []


async def _handled_at_tick(written: float) -> list[int]:
    handled: list[int] = []
    batcher = Batcher(lambda events: _record(handled, events), max_events=10, max_seconds=30)
    await asyncio.wait_for(batcher.consume(_Stream([b"a", b"b"], written)), timeout=5)
    await batcher.tick()
    return handled


async def test_what_already_waited_in_kafka_is_handed_over_at_the_next_tick() -> None:
    # Buffered just now, but written to Kafka longer ago than max_seconds: a worker behind.
    assert await _handled_at_tick(time.time() - 31) == [0, 1]
    # Written just now: it waits for max_seconds (here 30) as before.
    assert await _handled_at_tick(time.time()) == []
    # A writer's clock far ahead of this one's does not hold a batch past max_seconds either:
    # the time since it was buffered counts then (see the next test for that bound).
    assert await _handled_at_tick(time.time() + 3600) == []


async def test_a_batch_waits_at_most_max_seconds_since_it_was_buffered() -> None:
    handled: list[int] = []
    batcher = Batcher(lambda events: _record(handled, events), max_events=10, max_seconds=0.05)
    stream = _Stream([b"a"], written=time.time() + 3600)  # a clock an hour ahead
    await asyncio.wait_for(batcher.consume(stream), timeout=5)
    deadline = time.monotonic() + 5
    while not handled and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        await batcher.tick()
    assert handled == [0]
