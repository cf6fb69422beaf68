"""What a journey batch changed, written out in order by one task, off the agents' lock.

A batch's effects (``tracker.core.journeys.customers.Effects``) become a :class:`Unit`: result
rows, forwarded messages, and the new bytes of customer states and device entries (the identity
agent's units: its table entries and device notices, as states and forwards). The agents
submit units under their lock, so units are in the order the states changed; one task writes
them one after the other (the units queued while it wrote the last, together), each in this
order:

1. the result rows and signed changes to ClickHouse (``TableSink`` retries until written);
2. the forwarded messages to the journey-input topic, delivered (a merged-away customer's history
   is on its way before its tombstone is written): one Kafka message per partition holds that
   partition's messages of the unit, in order (:func:`group_forwarded`), as faust's cost is per
   Kafka message and most of these messages are a few touchpoints or a one-line notice;
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from faust.types import TP
from rocksdict import WriteBatch

from tracker.kafka.partitioner import partition_of
from tracker.warehouse.ingest import Encoded
from tracker.warehouse.sink import TableSink, merge_encoded

log = logging.getLogger(__name__)

UNITS_QUEUED = 8  # units waiting for the writer (a batch in flight each); one more waits
FORWARD_MESSAGE_BYTES = 256 * 1024  # of forwarded messages grouped into one Kafka message
PARTITIONS_CACHED = 100_000  # keys whose partition is kept (murmur2 is pure Python)


def group_forwarded(
    forward: Sequence[tuple[bytes, bytes]],
    partition_of: Callable[[bytes], int],
    max_bytes: int = FORWARD_MESSAGE_BYTES,
) -> list[tuple[int, bytes]]:
    """Forwarded messages (key, JSON value) as Kafka messages of the journey-input topic:
    (partition, JSON array of ``[key, message]`` pairs) in the order the pairs came within each
    partition, at most ``max_bytes`` a message (a bigger pair goes alone). The partition is the
    one Kafka's default partitioner gives the key: where the key's customer lives."""
    groups: list[tuple[int, list[bytes]]] = []
    filling: dict[int, list[bytes]] = {}  # partition -> the pairs of its last group
    size: dict[int, int] = {}  # partition -> that group's bytes
    for key, value in forward:
        partition = partition_of(key)
        pair = b"[%b,%b]" % (orjson.dumps(key.decode()), value)
        pairs = filling.get(partition)
        if pairs is None or size[partition] + len(pair) > max_bytes:
            pairs = filling[partition] = []
            size[partition] = 0
            groups.append((partition, pairs))
        pairs.append(pair)
        size[partition] += len(pair) + 1
    return [(partition, b"[" + b",".join(pairs) + b"]") for partition, pairs in groups]


def read_forwarded(key: bytes | None, value: bytes) -> list[tuple[str, Any]]:
    """The (key, message) pairs of one journey-input Kafka message: a group
    (:func:`group_forwarded`), or one message under its Kafka key as a worker before grouping
    wrote it (still in the topic after an upgrade)."""
    data = orjson.loads(value)
    if isinstance(data, list):
        return [(str(k), m) for k, m in data]
    if key is None:
        raise ValueError("a journey-input message without a key")
    return [(key.decode(), data)]


class Partitioner:
    """The partition Kafka's default partitioner gives a key among ``partitions``: where a
    table's write of that key goes. murmur2 is pure Python (2-4 µs a key), so the partitions
    of up to :data:`PARTITIONS_CACHED` keys are kept; one instance serves every table, as a
    customer's key is looked up in several of them."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._cached: dict[bytes, int] = {}

    def __call__(self, key: bytes) -> int:
        partition = self._cached.get(key)
        if partition is None:
            if len(self._cached) >= PARTITIONS_CACHED:
                self._cached.clear()
            partition = self._cached[key] = partition_of(key, self.partitions)
        return partition


class DirectTable:
    """A table of bytes whose writes go straight to its changelog (see the module docstring)."""

    def __init__(self, table: faust.types.TableT[Any, Any], partitioner: Partitioner) -> None:
        self.table = table
        self.partition_of = partitioner
        # Written by a unit not yet finished: newer than the local store.
        self.pending: dict[bytes, bytes] = {}

    @property
    def topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def get(self, key: bytes) -> bytes | None:
        value = self.pending.get(key)
        if value is not None:
            return value
        db = self._db(self.partition_of(key))
        stored = self.table.data.get(key) if db is None else db.get(key)
        return stored if stored else None

    def _db(self, partition: int) -> Any:
        """The RocksDB of ``partition`` when the store keeps one open (one read, where faust's
        own lookup of a key it has not indexed tries every partition's); else None."""
        dbs = getattr(self.table.data, "_dbs", None)
        return None if dbs is None else dbs.get(partition)

    def items(self) -> Iterator[tuple[bytes, Any]]:
        """Every entry held, the pending ones first (under the agents' lock: see Writer). A
        store in memory may hold a value as faust decoded it from the changelog, not as bytes."""
        yield from self.pending.items()
        for key, value in self.table.data.items():
            if key not in self.pending:
                yield key, value

    def stored(self, partition: int, records: list[tuple[bytes, bytes]], offset: int) -> None:
        """``records`` of ``partition`` are in the changelog, the last at ``offset``: keep them
        locally, as faust would."""
        store = self.table.data
        db = self._db(partition)
        if db is None:
            for key, value in records:
                store[key] = value
        else:  # one write: half the cost of a put per record
            batch = WriteBatch(raw_mode=True)
            for key, value in records:
                batch.put(key, value)
            db.write(batch)
        pending = self.pending
        for key, value in records:
            if pending.get(key) is value:
                del pending[key]
        store.set_persisted_offset(TP(self.topic, partition), offset)


@dataclass(eq=False)
class _Batch:
    """The states of one unit for one changelog partition."""

    table: DirectTable
    partition: int
    records: list[tuple[bytes, bytes]] = field(default_factory=list)

    def build(self, producer: Any) -> list[tuple[Any, int]]:
        """The records as the producer's record batches, in order, each with its number of
        records (a batch holds up to the producer's batch size; a bigger record goes alone)."""
        built: list[tuple[Any, int]] = []
        batch, count = producer.create_batch(), 0
        for key, value in self.records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                built.append((batch, count))
                batch, count = producer.create_batch(), 0
                batch.append(key=key, value=value, timestamp=None)
            count += 1
        built.append((batch, count))
        return built


@dataclass
class Unit:
    rows: Encoded
    changes: Encoded
    forward: list[tuple[bytes, bytes]]  # (key, value) to the journey-input topic
    states: list[tuple[DirectTable, bytes, bytes]]  # (table, key, value), a key at most once
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def merged(units: Sequence[Unit]) -> Unit:
    """The units queued together as one write, each part in their order: one insert per table,
    the forwards in order, of each state the last. Written in the order of a unit, the rows of
    all of them go before their forwards and states; the costs per write (two inserts, two
    round trips to Kafka) are paid once, where a writer behind paid them for every unit."""
    if len(units) == 1:
        return units[0]
    states: dict[tuple[int, bytes], tuple[DirectTable, bytes, bytes]] = {}
    for unit in units:
        for table, key, value in unit.states:
            states[id(table), key] = (table, key, value)
    return Unit(
        merge_encoded([unit.rows for unit in units]),
        merge_encoded([unit.changes for unit in units]),
        [message for unit in units for message in unit.forward],
        list(states.values()),
    )


class Writer:
    """One task that writes units in the order they were submitted; the units queued when it
    is free are written together (:func:`merged`)."""

    def __init__(
        self,
        app: faust.App,
        *,
        results: TableSink,
        changes: TableSink,
        forward_topic: str,
        forward_partition: Callable[[bytes], int],
        retry_max_seconds: float,
    ) -> None:
        self.app = app
        self.results = results
        self.changes = changes
        self.forward_topic = forward_topic
        self.forward_partition = forward_partition
        self.retry_max_seconds = retry_max_seconds
        self._queue: asyncio.Queue[Unit] = asyncio.Queue(maxsize=UNITS_QUEUED)
        self._task: asyncio.Task[None] | None = None
        # States in their changelog, for the local store: see store_delivered.
        self._delivered: list[tuple[_Batch, int]] = []  # (records, offset of the last)

    async def submit(
        self,
        rows: Encoded,
        changes: Encoded,
        forward: list[tuple[bytes, bytes]],
        states: list[tuple[DirectTable, bytes, bytes]],
    ) -> asyncio.Future[None]:
        """Queue a unit (call under the agents' lock: units keep that order); its future is
        done once everything in it is written. States are readable from ``pending`` at once."""
        self.store_delivered()
        for table, key, value in states:
            table.pending[key] = value
        unit = Unit(rows, changes, forward, states)
        if not (rows.rows or changes.rows or forward or states):
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
            units = [await self._queue.get()]
            while not self._queue.empty():
                units.append(self._queue.get_nowait())
            try:
                await self._write(merged(units))
            except Exception as exc:  # a bug: the agent that waits on it crashes the worker
                for unit in units:
                    unit.done.set_exception(exc)
                raise
            for unit in units:
                unit.done.set_result(None)

    async def _write(self, unit: Unit) -> None:
        await self.results.write(unit.rows)
        await self.changes.write(unit.changes)
        await self._deliver(group_forwarded(unit.forward, self.forward_partition))
        await self._deliver_states(unit.states)

    def store_delivered(self) -> None:
        """Put the states delivered to their changelogs into the local stores (call under the
        agents' lock: the stores and ``pending`` change only under it, so a timer rebuild that
        reads them while giving the loop back sees them whole)."""
        delivered, self._delivered = self._delivered, []
        for batch, offset in delivered:
            batch.table.stored(batch.partition, batch.records, offset)

    async def _deliver_states(self, states: list[tuple[DirectTable, bytes, bytes]]) -> None:
        """Send the states as record batches, one per changelog partition (a record at a time
        through the producer costs far more per state), and wait until each is acknowledged.
        The partitions whose sends failed are sent again, with capped exponential backoff:
        within a unit a key comes once, so the order between partitions does not matter, and
        a state written twice changes nothing."""
        batches: dict[tuple[str, int], _Batch] = {}
        for table, key, value in states:
            partition = table.partition_of(key)
            batch = batches.get((table.topic, partition))
            if batch is None:
                batch = batches[table.topic, partition] = _Batch(table, partition)
            batch.records.append((key, value))
        left = list(batches.values())
        delay = 0.1
        while left:
            sent: list[tuple[_Batch, int, Any]] = []  # (batch, records, future)
            whole: set[_Batch] = set()  # every record sent
            error: BaseException | None = None
            try:
                producer = self.app.producer._ensure_producer()
                for batch in left:
                    for built, count in batch.build(producer):
                        topic = batch.table.topic
                        future = await producer.send_batch(built, topic, partition=batch.partition)
                        sent.append((batch, count, future))
                    whole.add(batch)
            except KafkaError as exc:
                error = exc
            results = await asyncio.gather(*(f for _, _, f in sent), return_exceptions=True)
            last: dict[_Batch, int] = {}  # offset of each batch's last record
            for (batch, count, _), result in zip(sent, results, strict=True):
                if isinstance(result, BaseException):
                    error = error or result
                    whole.discard(batch)
                else:
                    last[batch] = max(last.get(batch, -1), result.offset + count - 1)
            done = [b for b in left if b in whole]
            self._delivered += [(b, last[b]) for b in done]
            left = [b for b in left if b not in done]
            if left:
                if error is not None and not isinstance(error, KafkaError):
                    raise error
                log.warning(
                    "event=state_send_failed partitions_left=%d retry_in=%.1f error=%r",
                    len(left), delay, error,
                )  # fmt: skip
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self.retry_max_seconds)

    async def _deliver(self, sends: Sequence[tuple[int, bytes]]) -> None:
        """Send (partition, value) to the journey-input topic in order and wait until each is
        acknowledged; what failed is sent again, in order, from the first failure on, with
        capped exponential backoff."""
        topic = self.forward_topic
        metas: list[Any] = []
        delay = 0.1
        while len(metas) < len(sends):
            futures = []
            error: BaseException | None = None
            try:
                for partition, value in sends[len(metas) :]:
                    futures.append(
                        await self.app.producer.send(topic, None, value, partition, None, None)
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
