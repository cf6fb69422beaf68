"""The worker's Batcher hands over a batch at its message bound or at its byte bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from streams.batching import Batcher


class _Stream:
    """The part of a faust stream the Batcher uses: events without acks, and ack."""

    def __init__(self, values: list[bytes]) -> None:
        self.values = values
        self.acked: list[Any] = []

    def noack(self) -> _Stream:
        return self

    async def events(self) -> AsyncIterator[Any]:
        for offset, value in enumerate(self.values):
            yield SimpleNamespace(message=SimpleNamespace(value=value, offset=offset))

    async def ack(self, event: Any) -> None:
        self.acked.append(event.message.offset)


async def _batches(values: list[bytes], **bounds: Any) -> tuple[list[list[int]], list[int]]:
    sizes: list[list[int]] = []

    async def handler(events: list[Any]) -> None:
        sizes.append([len(e.message.value) for e in events])

    stream = _Stream(values)
    batcher = Batcher(handler, max_seconds=60, **bounds)
    await asyncio.wait_for(batcher.consume(stream), timeout=5)
    await batcher.flush()
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
