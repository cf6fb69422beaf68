"""The journey agents: identity stitching across partitions, journeys per customer, timers.

Topics (``<app>`` is the app id):

- the touchpoints topic: JSON arrays of records, each on the partition of its sender's id
  (userId, else anonymousId), several senders to a message;
- ``<app>-journey-input``, messages for customer keys (or device ids), each on its key's
  partition, a partition's messages of a batch grouped into one Kafka message
  (``streams.writes.group_forwarded``): touchpoints forwarded to their customer's partition,
  ``move`` notices (a link gave these touchpoints to another customer: take them out here and
  send them on), ``owner`` notices ("id X now belongs to customer K", after an alias) and
  ``device`` notices (device X's links changed: where its anonymous touchpoints belong, in
  event time);
- ``<app>-identity-links``, one partition: identity links (several to a message), read by the one
  identity agent that keeps the identity graph (``tracker.core.identity``: the rules are there).

Tables (changelog-backed, keyed like the partitions they live in):

- ``customers``: customer key -> engine state (history, emitted results, version) as JSON bytes,
  or, for a key merged into another, a tombstone with its last version;
- ``owners``: id -> customer key, for ids that an alias merged into another customer;
- ``devices``: anonymousId -> its changes of user and whether it is shared, with the anonymous
  touchpoints a link can still move and the id each was given to (only for devices with links);
- ``identity-links``: device id -> its links, alias pair -> its newest alias, from which the
  identity graph is rebuilt after a restart.

What happens to a customer is decided by ``tracker.core.journeys.customers.Customers``, plain
code without I/O that the unit and property tests drive as well; the agents here decode the
input, call it under one lock per worker (so timers and agents never interleave inside a
read-modify-write), and carry its effects out. A batch's effects go to one writer task
(``streams/writes.py``), which writes them in order off the lock: result rows to ClickHouse,
then forwarded messages, then the changed states straight to the ``customers`` and ``devices``
changelogs. The batch is acknowledged only once they are written, so a state in the changelog
always has its rows in the warehouse. The most recently used states stay in memory as objects
(``STATES_CACHED``), dropped when partitions are revoked, because recovery may replace them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable
from typing import Any, NamedTuple

import faust
import orjson

from streams import collection
from streams.batching import Batcher
from streams.journey_metrics import JourneyMetrics
from streams.timers import Rebuild, Timers
from streams.writes import DirectTable, Partitioner, Writer, read_forwarded
from tracker.core.identity import Identities, Link, links_of
from tracker.core.journeys.customers import (
    Customers,
    Message,
    StateCache,
    device_of,
    link_notices,
)
from tracker.core.journeys.engine import JourneyEngine, Touchpoint
from tracker.metrics import Metrics
from tracker.settings import Settings
from tracker.warehouse.ingest import Encoded, TouchpointBlock
from tracker.warehouse.sink import CHANGE_COLUMNS, ResultRows, TableSink

log = logging.getLogger(__name__)

SENT_LINKS_MAX = 100_000
# Links reach the identity agent a little after the lateness check at ingest: repeats are kept
# this much longer than the allowed lateness before they are compacted away.
LINK_TRANSIT_MS = 5 * 60_000
LINKS_PER_MESSAGE = 500  # about 60 bytes each: well under Kafka's message size limit
STATES_CACHED = 10_000  # customer states kept as objects between batches (a few KB each)


def decode_records(value: bytes) -> list[dict[str, Any]]:
    """The records of one touchpoints message: a JSON array, as the collector writes it."""
    records = orjson.loads(value)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("message value is not a JSON array of records")
    return records


class _Decoded(NamedTuple):
    """A touchpoints batch as the worker takes it in."""

    rows: Encoded  # the raw rows, one insert
    by_sender: list[tuple[str, list[Touchpoint]]]  # touchpoints with a userId, or no device
    by_device: dict[str, list[Touchpoint]]  # anonymous touchpoints by device
    links: list[Link]  # identity links, sent once the batch is written


# What a batch hands to the writer: result rows, signed changes, forwarded messages, states.
_Writes = tuple[Encoded, Encoded, list[tuple[bytes, bytes]], list[tuple[DirectTable, bytes, bytes]]]


def now_ms() -> int:
    return int(time.time() * 1000)


def _raw_topic(app: faust.App, name: str, partitions: int, *, internal: bool) -> faust.TopicT:
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
        internal=internal,
    )


class JourneyAgents:
    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        engine: JourneyEngine,
        *,
        touchpoint_sink: TableSink,
        results_sink: TableSink,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.settings = settings
        self.engine = engine
        self.touchpoint_sink = touchpoint_sink
        self.sink = results_sink
        self.changes_sink = results_sink.sibling("journey_result_changes", CHANGE_COLUMNS)
        self.metrics = metrics
        self.journey_metrics = JourneyMetrics(engine.journeys, metrics)
        n = settings.topic_partitions
        prefix = settings.app_id
        self.touchpoints = _raw_topic(app, settings.topic_touchpoints, n, internal=False)
        self.journey_input = _raw_topic(app, f"{prefix}-journey-input", n, internal=True)
        self.links_topic = _raw_topic(app, f"{prefix}-identity-links", 1, internal=True)
        # Keys stay raw bytes, exactly as the topics are keyed, so a key's changelog partition is
        # the partition it is processed in; values are JSON.
        # (faust derives the changelog serializers from key_type/value_type: bytes = raw.)
        table_opts: dict[str, Any] = {"use_partitioner": True, "key_type": bytes}
        # Customer states are kept as their JSON bytes: a few hundred bytes each, where the same
        # state as Python lists and strings takes several times that, for every customer held.
        self.customers = app.Table("customers", partitions=n, value_type=bytes, **table_opts)
        self.owners = app.Table("owners", partitions=n, **table_opts)
        self.devices = app.Table("devices", partitions=n, value_type=bytes, **table_opts)
        self.links = app.Table("identity-links", partitions=1, **table_opts)
        self.identities: Identities | None = None
        # Customer states, device entries and the identity agent's entries are written
        # straight to their changelogs, in order, by one writer task (streams/writes.py); the
        # owners table, written only on merges, goes through faust's own table writes.
        self.partition_of = Partitioner(n)
        self.states = DirectTable(self.customers, self.partition_of)
        self.device_entries = DirectTable(self.devices, self.partition_of)
        self.owner_entries = DirectTable(self.owners, self.partition_of)  # read only
        self.link_entries = DirectTable(self.links, Partitioner(1))
        self.writer = Writer(
            app,
            results=self.sink,
            changes=self.changes_sink,
            forward_topic=self.journey_input.get_topic_name(),
            forward_partition=self.partition_of,
            retry_max_seconds=settings.sink_retry_max_seconds,
        )
        self.cache = StateCache(STATES_CACHED)
        self.core = Customers(
            engine,
            state_bytes=lambda key: self.states.get(key.encode()),
            device_bytes=lambda key: self.device_entries.get(key.encode()),
            owner_of=self._owner_of,
            cache=self.cache,
            on_changes=self.journey_metrics.changes,
            on_past=self.journey_metrics.past,
        )
        self.lock = asyncio.Lock()
        self.timers = Timers()
        self.timers_stale = True
        self._tick_writes: deque[asyncio.Future[None]] = deque()  # ticks' writes, in order
        self._generation = 0  # rebalances so far: a timer rebuild spanning one is stale
        # Partitions this worker owns now. The in-memory tables keep what they held for partitions
        # that moved to another worker; timers must only look at customers that are ours.
        self.active: set[int] = set()
        # Links already sent: SDKs repeat the anonymousId/userId pair on every event after a login.
        # (id, userId) -> the newest link of that pair sent from here: a repeat that is not newer
        # cannot change a customer key (the key follows the newest link), so it is not sent.
        self._sent_links: OrderedDict[tuple[str, str], tuple[Any, Any]] = OrderedDict()
        # Set once the links of the latest touchpoint batch are sent: each batch's go after.
        self._links_sent = asyncio.Event()
        self._links_sent.set()
        self._install()

    def source_topics(self) -> list[str]:
        """The topics the agents read (not the tables' changelogs)."""
        topics = (self.touchpoints, self.journey_input, self.links_topic)
        return [t.get_topic_name() for t in topics]

    # -- wiring ----------------------------------------------------------------------------------

    def _install(self) -> None:
        s = self.settings
        interval = min(s.timer_interval, s.sink_max_seconds / 2)
        batchers = []
        for topic, name, handler in (
            (self.touchpoints, "journeys-ingest", self.on_touchpoints),
            (self.journey_input, "journeys-customers", self.on_journey_input),
            (self.links_topic, "journeys-identity", self.on_links),
        ):
            batcher = Batcher(handler, max_events=s.sink_max_rows, max_seconds=s.sink_max_seconds)
            batchers.append(batcher)
            self.app.agent(topic, name=name)(batcher.consume)
            # A flush timer per agent: a touchpoint batch that waits for the lock or the writer
            # must not hold back forwarded messages and identity links (a login's way in).
            self.app.timer(interval, name=f"{name}-flush")(batcher.tick)

        # A timer of its own: a timer rebuild after a restart reads every state held, and raw
        # rows must not wait for it.
        @self.app.timer(interval)
        async def tick() -> None:
            await self.on_tick()

        @self.app.on_before_shutdown.connect
        async def shutdown(app: Any, **kwargs: Any) -> None:
            await self.writer.stop()  # the consumer stopped: nothing written now is acknowledged

        @self.app.on_partitions_revoked.connect
        async def revoked(app: Any, revoked: Any = None, **kwargs: Any) -> None:
            for batcher in batchers:
                batcher.revoke()
            self.core.forget_cached()  # recovery may replace the stored states
            self.journey_metrics.reset()
            self.active = set()
            self.metrics.assigned_partitions.set(0)

        @self.app.on_partitions_assigned.connect
        async def assigned(app: Any, assigned: Any = None, **kwargs: Any) -> None:
            ours = {self.touchpoints.get_topic_name(), self.journey_input.get_topic_name()}
            self.active = {tp.partition for tp in assigned or () if tp.topic in ours}
            self.metrics.assigned_partitions.set(len(self.active))

        @self.app.on_rebalance_complete.connect
        async def rebalanced(app: Any, **kwargs: Any) -> None:
            self.timers_stale = True
            self._generation += 1
            self.identities = None

    # -- touchpoints as they come from the collector ---------------------------------------------

    async def on_touchpoints(self, events: list[Any]) -> Awaitable[None]:
        """Raw rows to the warehouse; each touchpoint to its customer's journeys."""
        now = now_ms()
        with collection.paused():
            batch = self._decode(events, now)
        # The raw rows are written while the journeys are worked out: the insert runs in a
        # thread. The batch is acknowledged only after both, so a crash in between loses nothing
        # (raw rows collapse by message id, and the journeys ignore copies they already hold).
        raw = asyncio.ensure_future(self.touchpoint_sink.write(batch.rows))
        try:
            async with self.lock:
                # Ownership is looked up under the lock: an ownership notice handled between the
                # lookup and the update would otherwise leave these touchpoints with the old owner.
                with collection.paused():
                    self.core.touchpoints(batch.by_sender, batch.by_device, now)
                    writes = self._effects()
                written = await self.writer.submit(*writes)
        except BaseException:
            await raw
            raise
        # The rest only waits on writes: the next batch is handled meanwhile (streams/batching.py).
        previous, self._links_sent = self._links_sent, asyncio.Event()
        return self._finish(written, raw, batch.links, previous, self._links_sent)

    def _decode(self, events: list[Any], now: int) -> _Decoded:
        """A batch's messages split into raw rows, touchpoints by customer and identity links."""
        # One row per messageId: of a message's copies in a batch the last one (the table keeps
        # the copy inserted last; within one insert that choice is not ClickHouse's to make).
        rows = TouchpointBlock()
        consumed = 0
        by_sender: list[tuple[str, list[Touchpoint]]] = []  # touchpoints with a userId
        by_device: dict[str, list[Touchpoint]] = {}  # anonymous touchpoints
        links: list[Link] = []
        late = 0
        oldest = now - self.engine.lateness_ms  # older is late (JourneyEngine.is_late)
        signature = self.engine.signature
        for event in events:
            message = event.message
            try:
                records = decode_records(message.value)
                decoded = [(Touchpoint.from_record(r), str(r.get("user_id") or ""),
                            str(r.get("anonymous_id") or ""), r) for r in records]  # fmt: skip
                rows.add(records, message.partition, message.offset, message.value)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                self.metrics.undecodable.inc()
                log.warning(
                    "event=undecodable_message partition=%s offset=%s error=%r",
                    message.partition, message.offset, exc,
                )  # fmt: skip
                continue
            consumed += len(records)
            # A message holds many customers (the collector groups records by partition): split
            # it by the record's key, userId else anonymousId, in the order they came.
            senders: dict[str, list[Touchpoint]] = {}
            for tp, user, anon, record in decoded:
                if user:  # only a record with a userId links ids
                    links += links_of(record)
                if tp.t < oldest:
                    late += 1
                    continue
                tp.bits = signature(tp)  # before it is stored or forwarded
                if user or not anon:
                    senders.setdefault(user or anon, []).append(tp)
                else:
                    by_device.setdefault(anon, []).append(tp)
            by_sender += senders.items()
        if late:
            self.metrics.late_events.inc(late)
        self.metrics.events_consumed.inc(consumed)
        return _Decoded(rows.encode(), by_sender, by_device, links)

    async def _finish(
        self,
        written: asyncio.Future[None],
        raw: asyncio.Future[None],
        links: list[Link],
        previous: asyncio.Event,
        sent: asyncio.Event,
    ) -> None:
        """A touchpoint batch's writes, then its links, sent after the batch before sent its."""
        try:
            await written
            await previous.wait()
            await self._send_links(links)
            sent.set()
        finally:
            await raw

    async def _send_links(self, links: list[Link]) -> None:
        """The batch's identity links, to the identity agent.

        SDKs repeat the anonymousId/userId pair on every event after a login, so most are
        repeats; of each pair, the earliest and the newest link of the batch go out, and only if
        they widen the span of that pair's links sent before (a repeat inside it matters only
        when another user's link lands between two of them).
        """
        spans: dict[tuple[str, str, bool], list[Link]] = {}
        for link in links:
            spans.setdefault((link.from_id, link.user_id, link.alias), []).append(link)
        out = []
        for pair, pair_links in spans.items():
            first = min(pair_links, key=lambda k: k.order)
            last = max(pair_links, key=lambda k: k.order)
            sent = self._sent_links.get(pair)
            if sent is not None:
                self._sent_links.move_to_end(pair)
            lo, hi = sent if sent is not None else (first.order, last.order)
            for link in {first, last}:
                if sent is None or link.alias or not lo <= link.order <= hi:
                    out.append([link.from_id, link.user_id, link.t, link.message_id, link.alias])
            self._sent_links[pair] = (min(lo, first.order), max(hi, last.order))
            if len(self._sent_links) > SENT_LINKS_MAX:
                self._sent_links.popitem(last=False)
        for i in range(0, len(out), LINKS_PER_MESSAGE):
            await self.links_topic.send(
                key=b"links", value=orjson.dumps(out[i : i + LINKS_PER_MESSAGE])
            )

    # -- forwarded touchpoints and ownership notices --------------------------------------------

    async def on_journey_input(self, events: list[Any]) -> Awaitable[None]:
        await self._changelog_metadata()  # ownership notices write the owners table
        now = now_ms()
        with collection.paused():
            messages = [m for e in events for m in read_forwarded(e.message.key, e.message.value)]
        async with self.lock:
            with collection.paused():
                self.core.journey_input(messages, now)
                writes = self._effects()
            return await self.writer.submit(*writes)  # acknowledged once written

    # -- the identity graph ----------------------------------------------------------------------

    async def on_links(self, events: list[Any]) -> Awaitable[None]:
        """The identity rules (``tracker.core.identity``) over every link: owner notices for
        ids an alias re-keyed, device notices for devices whose attribution changed.

        The entries and notices go out through the writer, like the journey agents' states
        and forwards (a record batch per partition, not faust's one-message-at-a-time table
        and topic sends, which set this agent's pace); the batch is acknowledged once written.
        """
        ids = self._identities()
        # Repeats older than this can no longer be split by a late link (see Identities.add).
        horizon = now_ms() - self.engine.lateness_ms - LINK_TRANSIT_MS
        links = []
        entries: dict[bytes, Any] = {}  # written by this batch
        for event in events:
            for from_id, user_id, t, message_id, alias in orjson.loads(event.message.value):
                link = Link(from_id, user_id, t, message_id, bool(alias))
                links.append(link)
                if link.alias:  # one entry per alias pair, its newest link
                    pair_key = f"{from_id}\x00{user_id}".encode()
                    stored = entries.get(pair_key) or self._link_entry(pair_key)
                    if not stored or Link(*stored).order < link.order:
                        entries[pair_key] = [from_id, user_id, t, message_id, True]
        notices, touched, shared = link_notices(ids, links, horizon)
        if shared:
            self.metrics.identity_shared_devices.inc(shared)
        for device in sorted(touched):
            d = ids.devices[device]
            entries[device.encode()] = {"l": d.links, "s": d.shared}
        states = [(self.link_entries, key, orjson.dumps(v)) for key, v in entries.items()]
        forward = [(key.encode(), orjson.dumps(msg)) for key, msg in notices]
        async with self.lock:  # units reach the writer in order
            return await self.writer.submit(*ResultRows().encode(), forward, states)

    def _link_entry(self, key: bytes) -> Any:
        return _decoded(self.link_entries.get(key))

    def _identities(self) -> Identities:
        if self.identities is None:
            ids = Identities(self.settings.max_users_per_device)
            for key, stored in self.link_entries.items():
                raw = _decoded(stored)
                if isinstance(raw, dict):
                    ids.devices[key.decode()] = device_of(raw)
                elif raw:
                    ids.add(Link(*raw))
            self.identities = ids
        return self.identities

    # -- timers ------------------------------------------------------------------------------------

    async def on_tick(self) -> None:
        if not self._streams_ready():
            return
        if self.timers_stale and not await self._rebuild_timers():
            return
        await self._settle_due()

    def _streams_ready(self) -> bool:
        """Whether faust is done with a rebalance, up to the seek after its recovery: a timer
        rebuild competing with that seek for the loop delayed it by seconds at a million states."""
        recovered = self.app.tables.recovery.completed.is_set()
        return recovered and self.app.consumer.flow_active and not self.app.rebalancing

    async def _settle_due(self) -> None:
        """Settle the customers whose deadline came. The tick does not wait for its writes
        (they go in order with every other batch's): a tick that waited for them fired once a
        second or less under load, and drop-offs waited for it (``tracker bench e2e``). A
        failed write of an earlier tick is raised here, as an agent raises its batch's."""
        pending = self._tick_writes  # at most the writer's queue: a submit waits when it is full
        while pending and pending[0].done():
            await pending.popleft()  # raises what failed
        now = now_ms()
        async with self.lock:
            self.writer.store_delivered()
            # At most a batch's worth per tick: after an outage every customer may be due at once.
            due = self.timers.due(now, self.settings.sink_max_rows)
            with collection.paused():
                self.core.settle_due([key for key in sorted(due) if self._is_ours(key)], now)
                writes = self._effects()
            written = await self.writer.submit(*writes)
        pending.append(written)

    async def _rebuild_timers(self) -> bool:
        """A timer for every customer of ours with a drop-off not emitted yet, including those
        whose deadline passed while nobody owned their partition: they are due at once; and the
        open instances counted again.

        This reads every state held, a slice at a time under the lock (``streams/timers.py``):
        touchpoints are handled in between, and the timers found so far fire. A rebalance in
        between makes it give up (False); the next tick starts again.
        """
        generation = self._generation
        rebuild = Rebuild(self.customers, self.active, self.settings.topic_partitions,
                          self.engine, self.journey_metrics, self.timers,
                          pending=self.states.pending)  # fmt: skip
        began = time.monotonic()
        fired = began
        try:
            async with self.lock:
                rebuild.start()
            while not rebuild.done:
                await asyncio.sleep(0)
                if self._generation != generation or self.app.rebalancing or self.app.should_stop:
                    return False
                if not self._streams_ready():  # faust stopped the flow: a rebalance begins
                    await asyncio.sleep(self.settings.timer_interval)
                    continue
                if time.monotonic() - fired >= self.settings.timer_interval:
                    if self.timers.due_before(now_ms()):
                        await self._settle_due()
                    fired = time.monotonic()
                async with self.lock:
                    if self._generation != generation or self.app.rebalancing:
                        return False
                    self.writer.store_delivered()
                    rebuild.step()
        finally:
            rebuild.finish()
        self.timers_stale = False
        log.info("event=timers_rebuilt states=%d timers=%d seconds=%.2f",
                 rebuild.read, len(self.timers), time.monotonic() - began)  # fmt: skip
        return True

    # -- state changes -----------------------------------------------------------------------------

    def _is_ours(self, key: str) -> bool:
        """Whether ``key``'s partition (Kafka's default partitioner) is assigned here."""
        return self.partition_of(key.encode()) in self.active

    def _owner_of(self, key: str) -> str | None:
        """Who ``key`` belongs to, if an alias gave it to another customer. Looked up for
        every sender of every batch: read straight from its partition's store (faust's own
        lookup of a key it has not indexed tries every partition)."""
        owner = _decoded(self.owner_entries.get(key.encode()))
        return str(owner) if owner else None

    def _effects(self) -> _Writes:
        """What the batch changed, for the writer (streams/writes.py): result rows, then
        forwarded messages, then the new states, written in that order off the lock. The
        writer's ``submit`` returns the future to wait on (outside the lock) before the batch
        is acknowledged."""
        self.journey_metrics.drain(self.engine.counts)
        fx = self.core.commit()
        for deadline in fx.deadlines:
            self.timers.push(*deadline)
        for key, owner in fx.owners.items():
            if owner is None:
                self.owners.pop(key.encode(), None)
            else:
                self.owners[key.encode()] = owner
        self.metrics.customer_batches.inc(fx.customer_batches)
        if fx.merges:
            self.metrics.identity_merges.inc(fx.merges)
        if fx.moved:
            self.metrics.identity_moved.inc(fx.moved)
        for key, size in fx.refused:
            self.metrics.journey_states_refused.inc()
            log.error("event=state_refused customer=%s bytes=%d", key, size)
        rows = ResultRows()
        rows.add(fx.changes)
        states = [(self.states, key.encode(), value) for key, value in fx.states.items()]
        states += [(self.device_entries, key.encode(), v) for key, v in fx.devices.items()]
        return (*rows.encode(), _forwarded(fx.forward), states)

    async def _changelog_metadata(self) -> None:
        """faust's table writes (the owners table's; the other tables' go through the writer,
        whose sends wait for it) look their changelog's partitions up in the producer's metadata
        without waiting for it; on a fresh cluster (or after a rebalance that created the
        topics) the producer may not know them yet, and the write would crash the app."""
        producer = self.app.producer._ensure_producer()
        topic = self.owners.changelog_topic.get_topic_name()
        if producer.client.cluster.partitions_for_topic(topic) is None:
            await producer.partitions_for(topic)


def _decoded(stored: Any) -> Any:
    """A JSON table entry as :class:`DirectTable` reads it: the stored bytes, or (from a store in
    memory that faust recovered from the changelog) the value faust decoded."""
    return orjson.loads(stored) if isinstance(stored, bytes) else stored


def _forwarded(forward: list[tuple[str, Message]]) -> list[tuple[bytes, bytes]]:
    """Forwarded messages in order, touchpoints for one key in a row as one message."""
    merged: list[tuple[str, Message]] = []
    for key, msg in forward:
        prev = merged[-1] if merged else None
        if (
            prev is not None
            and prev[0] == key
            and prev[1]["kind"] == msg["kind"] == "tps"
            and "past" not in prev[1]
            and "past" not in msg
        ):
            prev[1]["tps"].extend(msg["tps"])
        else:
            merged.append((key, {**msg, "tps": list(msg["tps"])} if "tps" in msg else msg))
    return [(key.encode(), orjson.dumps(msg)) for key, msg in merged]
