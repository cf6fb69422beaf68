"""What a journey batch changed, written out in order by one task, off the agents' lock.

A batch's effects (``tracker.core.journeys.customers.Effects``) become a :class:`Unit`: result
rows, forwarded messages, and the new bytes of customer states and device entries. The agents
submit units under their lock, so units are in the order the states changed; one task writes
them one after the other, each in this order:

1. the result rows and signed changes to ClickHouse (``TableSink`` retries until written);
2. the forwarded messages to the journey-input topic, delivered (a merged-away customer's history
   is on its way before its tombstone is written);
3. the states straight to their tables' changelog topics with the producer (not through faust's
   per-key table path and its producer buffer), delivered.

So a state in the changelog always has its rows in the warehouse. The agent awaits its unit
before its batch is acknowledged; a failed send is retried with capped backoff and nothing is
acknowledged meanwhile. Delivered states go into the local store (with the changelog offset it
holds, for a RocksDB store, as faust's own table writes record it) the next time the agents hold
their lock; until then they are read from ``pending``.

A changelog record is what faust's table write would send: the raw key and value, in the
partition Kafka's default partitioner gives the key, so the table's own recovery rebuilds it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from faust.exceptions import ProducerSendError

from tracker.warehouse.sink import TableSink

log = logging.getLogger(__name__)

UNITS_QUEUED = 2  # units waiting for the writer; a third submit waits for the first to finish
PARTITIONS_CACHED = 100_000  # keys whose partition is kept (murmur2 is pure Python)


class DirectTable:
    """A table of bytes whose writes go straight to its changelog (see the module docstring)."""

    def __init__(self, table: faust.types.TableT[Any, Any], partitions: int) -> None:
        self.table = table
        self.partitions = partitions
        # Written by a unit not yet finished: newer than the local store.
        self.pending: dict[bytes, bytes] = {}
        self._partition: dict[bytes, int] = {}

    @property
    def topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def get(self, key: bytes) -> bytes | None:
        value = self.pending.get(key)
        if value is not None:
            return value
        stored = self.table.data.get(key)
        return stored if stored else None

    def partition_of(self, key: bytes) -> int:
        """The partition Kafka's default partitioner gives ``key``: where faust's write went."""
        partition = self._partition.get(key)
        if partition is None:
            if len(self._partition) >= PARTITIONS_CACHED:
                self._partition.clear()
            partition = self._partition[key] = (murmur2(key) & 0x7FFFFFFF) % self.partitions
        return partition

    def values(self) -> Iterator[bytes]:
        """Every value held, the pending ones first (under the agents' lock: see Writer)."""
        yield from self.pending.values()
        for key, value in self.table.data.items():
            if key not in self.pending:
                yield value

    def stored(self, key: bytes, value: bytes, meta: Any) -> None:
        """``value`` is in the changelog at ``meta``: keep it locally, as faust would."""
        store = self.table.data
        store[key] = value
        store.set_persisted_offset(meta.topic_partition, meta.offset)
        if self.pending.get(key) is value:
            del self.pending[key]


@dataclass
class Unit:
    rows: list[list[Any]]
    changes: list[list[Any]]
    forward: list[tuple[bytes, bytes]]  # (key, value) to the journey-input topic
    states: list[tuple[DirectTable, bytes, bytes]]  # (table, key, value)
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Writer:
    """One task that writes units in the order they were submitted."""

    def __init__(
        self,
        app: faust.App,
        *,
        results: TableSink,
        changes: TableSink,
        forward_topic: str,
        retry_max_seconds: float,
    ) -> None:
        self.app = app
        self.results = results
        self.changes = changes
        self.forward_topic = forward_topic
        self.retry_max_seconds = retry_max_seconds
        self._queue: asyncio.Queue[Unit] = asyncio.Queue(maxsize=UNITS_QUEUED)
        self._task: asyncio.Task[None] | None = None
        # States in their changelog, for the local store: see store_delivered.
        self._delivered: list[tuple[DirectTable, bytes, bytes, Any]] = []

    async def submit(
        self,
        rows: Iterable[list[Any]],
        changes: list[list[Any]],
        forward: list[tuple[bytes, bytes]],
        states: list[tuple[DirectTable, bytes, bytes]],
    ) -> asyncio.Future[None]:
        """Queue a unit (call under the agents' lock: units keep that order); its future is
        done once everything in it is written. States are readable from ``pending`` at once."""
        self.store_delivered()
        for table, key, value in states:
            table.pending[key] = value
        unit = Unit(list(rows), changes, forward, states)
        if not (unit.rows or changes or forward or states):
            unit.done.set_result(None)  # nothing to write, nothing to keep in order
            return unit.done
        if not (unit.rows or changes or forward or states):
            unit.done.set_result(None)  # nothing to write, nothing to keep in order
            return unit.done
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        await self._queue.put(unit)
        return unit.done

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            unit = await self._queue.get()
            try:
                await self._write(unit)
            except Exception as exc:  # a bug: the agent that waits on it crashes the worker
                unit.done.set_exception(exc)
                raise
            unit.done.set_result(None)

    async def _write(self, unit: Unit) -> None:
        await self.results.write(unit.rows)
        await self.changes.write(unit.changes)
        await self._deliver([(self.forward_topic, key, value, None) for key, value in unit.forward])
        sends = [(t.topic, key, value, t.partition_of(key)) for t, key, value in unit.states]
        metas = await self._deliver(sends)
        self._delivered += [(t, k, v, m) for (t, k, v), m in zip(unit.states, metas, strict=True)]

    def store_delivered(self) -> None:
        """Put the states delivered to their changelogs into the local stores (call under the
        agents' lock: the stores and ``pending`` change only under it, so a timer rebuild that
        reads them while giving the loop back sees them whole)."""
        delivered, self._delivered = self._delivered, []
        for table, key, value, meta in delivered:
            table.stored(key, value, meta)

    async def _deliver(self, sends: Sequence[tuple[str, bytes, bytes, int | None]]) -> list[Any]:
        """Send in order and wait until each is acknowledged; what failed is sent again, in
        order, from the first failure on, with capped exponential backoff."""
        metas: list[Any] = []
        delay = 0.1
        while len(metas) < len(sends):
            futures = []
            error: BaseException | None = None
            try:
                for topic, key, value, partition in sends[len(metas) :]:
                    futures.append(
                        await self.app.producer.send(topic, key, value, partition, None, None)
                    )
            except (KafkaError, ProducerSendError) as exc:
                error = exc
            for result in await asyncio.gather(*futures, return_exceptions=True):
                if isinstance(result, BaseException):
                    error = result
                    break
                metas.append(result)
            if error is not None and len(metas) < len(sends):
                if not isinstance(error, (KafkaError, ProducerSendError)):
                    raise error
                log.warning(
                    "event=state_send_failed sent=%d of=%d retry_in=%.1f error=%r",
                    len(metas), len(sends), delay, error,
                )  # fmt: skip
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self.retry_max_seconds)
        return metas
