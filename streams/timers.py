"""The journey worker's timers: when each customer must be settled next, and how a worker finds
them again after a restart or a rebalance.

A timer is ``(deadline, customer)`` on a heap; settling a customer pushes its next deadline, so a
customer can have stale entries (settling it again then changes nothing). After a rebalance the
heap is rebuilt from every customer state of the partitions this worker owns, and the open
journey instances are counted again from the same states.

That pass reads every state held: about a million at a million customers, tens of seconds. It
runs in slices of :data:`SLICE_SECONDS`, each under the journey lock, and gives the lock back in
between, so touchpoints are written and journeys evaluated while it goes on, and timers already
found fire. A slice reads, under the lock, the states as they are after every batch before it.

Each partition is read in key order from where the slice before stopped, so at any moment a
customer is either behind the scan (counted: later changes count as changes) or ahead of it
(it will be counted as it is when the scan gets there: until then its changes must not count,
or they would count twice). :meth:`Rebuild.ahead` tells which; the open-instance gauges ask it.
A state written but not yet in the store (its changelog send unacknowledged) may land there
after the scan went past its key: such a customer, new to the store, is counted as it changes
from the start (or, written before the pass, when it starts) and the scan skips it.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import struct
import time
from collections.abc import Container, Iterator
from typing import Any

import orjson

from streams.journey_metrics import JourneyMetrics
from tracker.core.journeys.codec import load_counted, load_state, stored_deadline
from tracker.core.journeys.engine import JourneyEngine
from tracker.kafka.partitioner import partition_of

_Read = tuple[list[tuple[bytes, bytes]], bytes | None]  # (key, value)s, the last key passed
# A slice of a rebuild holds the journey lock for about this long (read CHUNK states at a time).
SLICE_SECONDS = 0.02
SLICE = 100_000
CHUNK = 100
_DEADLINE = struct.Struct(">Q")  # a timer's deadline: 8 bytes that sort as the number does


class Timers:
    """A heap of ``(deadline, customer)``, each held as one bytes object.

    There is an entry for every customer with a drop-off to come: about a million at a million
    open journey instances, so its size is most of what the worker holds per customer. An entry
    is the deadline in milliseconds as 8 big-endian bytes followed by the customer key in UTF-8:
    bytes compare as the (deadline, customer) tuples would, and one object of about 70 bytes
    replaces a tuple, an int and a str of about 170.

    Every batch that changes a customer pushes its deadline again, mostly the same one: exact
    copies are dropped whenever the heap has doubled since the last time (amortised, and in C),
    so it holds about one entry per customer and deadline, not one per batch.
    """

    COMPACT_MIN = 1024  # entries below which copies are not looked for

    def __init__(self) -> None:
        self._heap: list[bytes] = []
        self._compact_at = self.COMPACT_MIN

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline: int, customer: str) -> None:
        # A deadline before the epoch is long past: due at once, as 0 is.
        heapq.heappush(self._heap, _DEADLINE.pack(max(deadline, 0)) + customer.encode())
        if len(self._heap) >= self._compact_at:
            self._compact()

    def _compact(self) -> None:
        self._heap = list(set(self._heap))
        heapq.heapify(self._heap)
        self._compact_at = max(2 * len(self._heap), self.COMPACT_MIN)

    def clear(self, keep: Container[bytes] = ()) -> None:
        """Forget every timer but those of the customers in ``keep``."""
        self._heap = [entry for entry in self._heap if entry[8:] in keep]
        heapq.heapify(self._heap)
        self._compact_at = max(2 * len(self._heap), self.COMPACT_MIN)

    def due_before(self, now: int) -> bool:
        return bool(self._heap) and _DEADLINE.unpack_from(self._heap[0])[0] < now

    def due(self, now: int, most: int) -> set[str]:
        """Up to ``most`` customers whose deadline is before ``now``, taken off the heap."""
        out: set[str] = set()
        heap = self._heap
        # Entries before ``now`` are those below its 8 bytes followed by nothing.
        bound = _DEADLINE.pack(max(now, 0))
        while heap and heap[0] < bound and len(out) < most:
            out.add(heapq.heappop(heap)[8:].decode())
        return out


class _Segment:
    """Keys of the customers table in key order, read from a cursor on."""

    def read(self, after: bytes | None, most: int) -> _Read:
        """Up to ``most`` (key, value) after ``after``, and the last key passed (None: the end)."""
        raise NotImplementedError

    def will_read(self, key: bytes) -> bool:
        """Whether ``key``, when it is ahead of the cursor, will be read by this scan if it
        changes no more: whether it is in the store now."""
        raise NotImplementedError


class _RocksSegment(_Segment):
    """One partition's RocksDB database, iterated in key order: keys stored later are read when
    they land ahead of the cursor."""

    def __init__(self, db: Any, offset_key: bytes) -> None:
        self.db = db
        self.offset_key = offset_key

    def read(self, after: bytes | None, most: int) -> _Read:
        items: Iterator[tuple[bytes, bytes]] = iter(self.db.items(from_key=after or b""))
        if after is not None:
            items = (kv for kv in items if kv[0] != after)
        out = list(itertools.islice(items, most))
        last = out[-1][0] if out else None
        return [kv for kv in out if kv[0] != self.offset_key], last

    def will_read(self, key: bytes) -> bool:
        return self.db.get(key) is not None


class _DictSegment(_Segment):
    """An in-memory table: a dict without order. The keys held when the scan starts, sorted; a
    key written later is behind the scan from the start (its changes count as they happen)."""

    def __init__(self, data: dict[bytes, bytes]) -> None:
        self.data = data
        self.keys = sorted(data)

    def read(self, after: bytes | None, most: int) -> _Read:
        start = 0 if after is None else bisect.bisect_right(self.keys, after)
        keys = self.keys[start : start + most]
        out = [(k, v) for k in keys if (v := self.data.get(k)) is not None]
        return out, keys[-1] if keys else None

    def will_read(self, key: bytes) -> bool:
        i = bisect.bisect_left(self.keys, key)
        return i < len(self.keys) and self.keys[i] == key


class Rebuild:
    """One pass over the customer states of the partitions owned here (see the module's text)."""

    def __init__(
        self,
        table: Any,
        partitions: set[int],
        n_partitions: int,
        engine: JourneyEngine,
        metrics: JourneyMetrics,
        timers: Timers,
        pending: dict[bytes, bytes] | None = None,
    ) -> None:
        self.table = table
        # States written by a batch whose changelog sends are not acknowledged yet: newer than
        # the store's (streams/writes.py). Their timers were pushed when they were written.
        self.pending = pending if pending is not None else {}
        self.partitions = sorted(partitions)
        self.n_partitions = n_partitions
        self.engine = engine
        self.metrics = metrics
        self.timers = timers
        self.segments: list[_Segment] = []
        self._index = 0  # the segment being read
        self._after: bytes | None = None  # the last key read in it
        # Customers not in the store when they were met ahead of the scan: counted as they
        # change, skipped by the scan (their state may reach the store after it went past).
        self.live: set[bytes] = set()
        self.read = 0

    def start(self) -> None:
        """Under the lock: forget the timers and open counts, take the cursor to the start; from
        now on the open-instance gauges ask :meth:`ahead`."""
        store = self.table.data
        dbs = getattr(store, "_dbs", None)
        if dbs is None:  # in memory: one segment, every partition's keys (ours are picked out)
            self.segments = [_DictSegment(store.data)]
        else:  # RocksDB: a database per partition, holding only that partition's keys
            self.segments = [
                _RocksSegment(store._db_for_partition(p), store.offset_key) for p in self.partitions
            ]
        self.timers.clear(keep=self.pending)
        self.metrics.reset()
        self.metrics.ahead_of_recount = self.ahead
        for key, raw in self.pending.items():
            i = self._segment_of(key)
            if i is not None and not self.segments[i].will_read(key):
                self.live.add(key)  # written before the pass, not in the store yet
                self._count(key, raw)

    def finish(self) -> None:
        """The pass is over or given up: changes count as they happen again."""
        if self.metrics.ahead_of_recount == self.ahead:
            self.metrics.ahead_of_recount = None

    @property
    def done(self) -> bool:
        return self._index >= len(self.segments)

    def ours(self, key: bytes) -> bool:
        return partition_of(key, self.n_partitions) in self.partitions

    def _segment_of(self, key: bytes) -> int | None:
        if len(self.segments) == 1 and isinstance(self.segments[0], _DictSegment):
            return 0
        partition = partition_of(key, self.n_partitions)
        return self.partitions.index(partition) if partition in self.partitions else None

    def ahead(self, customer: str) -> bool:
        """Whether ``customer`` is still ahead of the scan (not counted yet, to be counted)."""
        key = customer.encode()
        i = self._segment_of(key)
        if i is None or i < self._index or self.done or key in self.live:
            return False
        if i == self._index and self._after is not None and key <= self._after:
            return False
        if self.segments[i].will_read(key):
            return True
        self.live.add(key)
        return False

    def step(self, seconds: float = SLICE_SECONDS, most: int = SLICE) -> None:
        """Read states for about ``seconds``, ``most`` at most (call under the lock)."""
        until = time.perf_counter() + seconds
        while most > 0 and not self.done and time.perf_counter() < until:
            items, last = self.segments[self._index].read(self._after, min(most, CHUNK))
            if last is None:
                self._index += 1
                self._after = None
                continue
            for key, raw in items:
                if key not in self.live:
                    self._count(key, self.pending.get(key, raw))
            self._after = last
            most -= max(len(items), 1)
            self.read += len(items)

    def _count(self, key: bytes, raw: bytes) -> None:
        if not raw:
            return  # a deletion recovered from the changelog
        if isinstance(self.segments[0], _DictSegment) and not self.ours(key):
            return  # in memory, the tables keep partitions that moved to another worker
        data = orjson.loads(raw)
        if "gone" in data:
            return  # a customer key merged into another
        customer = data["c"]
        known, deadline = stored_deadline(data, self.engine.fingerprint)
        if known:
            self.metrics.add_state(load_counted(data, self.engine.fingerprint))
        else:
            state = load_state(data, self.engine.fingerprint)
            self.metrics.add_state(state)
            deadline = self.engine.next_deadline(state)
        if deadline is not None:
            self.timers.push(deadline, customer)
