"""The journey agents: identity stitching across partitions, journeys per customer, timers.

Topics (``<app>`` is the app id):

- the touchpoints topic, keyed by the sender's id (userId, else anonymousId);
- ``<app>-journey-input``, keyed by customer key (or device id): touchpoints forwarded to their
  customer's partition, ``drop`` notices (take these touchpoints out: a link gave them to another
  customer), ``owner`` notices ("id X now belongs to customer K", after an alias) and ``device``
  notices (device X's links changed: where its anonymous touchpoints belong, in event time);
- ``<app>-identity-links``, one partition: identity links (several to a message), read by the one
  identity agent that keeps the identity graph (``tracker.core.identity``: the rules are there).

Tables (changelog-backed, keyed like the partitions they live in):

- ``customers``: customer key -> engine state (history, emitted results, version) as JSON bytes,
  or, for a key merged into another, a tombstone with its last version;
- ``owners``: id -> customer key, for ids that an alias merged into another customer;
- ``devices``: anonymousId -> its changes of user and whether it is shared, with every anonymous
  touchpoint of the device and the id it was given to (only for devices that have links);
- ``identity-links``: device id -> its links, alias pair -> its newest alias, from which the
  identity graph is rebuilt after a restart.

A touchpoint keyed by userId X is handled where it arrives when X is its own customer, else
forwarded to the owner's partition. An anonymous touchpoint of a device with links goes to the
user its device notice gives it (forwarded by userId, whose partition forwards on to an alias's
owner); of a device without links, to the device's own customer. When the identity agent finds
that an alias makes X belong to K, it tells X's partition; there X's state (if X was a customer)
is withdrawn from the warehouse and its history forwarded to K, where it is merged and evaluated
again. When a device's links change, its partition moves the anonymous touchpoints whose owner
changed: a ``drop`` to the old owner, the touchpoints to the new one. Results are written to
ClickHouse before the input's offsets are acknowledged; every state change happens under one lock
per worker, so timers and agents never interleave inside a read-modify-write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import faust
import orjson
from aiokafka.partitioner import murmur2

from streams.batching import Batcher
from streams.journey_metrics import JourneyMetrics
from streams.timers import Rebuild, Timers
from tracker.core.identity import Device, Identities, Link, links_of
from tracker.core.journeys.codec import (
    dump_state,
    load_state,
    result_row,
    tp_from_list,
    tp_to_list,
)
from tracker.core.journeys.engine import Change, CustomerState, JourneyEngine, Touchpoint
from tracker.metrics import Metrics
from tracker.settings import Settings
from tracker.warehouse.sink import (
    CHANGE_COLUMNS,
    TableSink,
    change_db_row,
    touchpoint_row,
)

log = logging.getLogger(__name__)

SENT_LINKS_MAX = 100_000
# Links reach the identity agent a little after the lateness check at ingest: repeats are kept
# this much longer than the allowed lateness before they are compacted away.
LINK_TRANSIT_MS = 5 * 60_000
LINKS_PER_MESSAGE = 500  # about 60 bytes each: well under Kafka's message size limit


def decode_records(value: bytes) -> list[dict[str, Any]]:
    """The records of one touchpoints message: a JSON array, as the collector writes it."""
    records = orjson.loads(value)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("message value is not a JSON array of records")
    return records


def _tight(value: bytes) -> bytes:
    """A copy of exactly its length: orjson's result keeps a buffer of several KB behind it,
    which held for every customer would cost more than the state itself."""
    return bytes(memoryview(value))


def _device_of(entry: dict[str, Any]) -> Device:
    """A device's links as a stored entry or a device notice holds them."""
    links = [(int(t), str(mid), str(user)) for t, mid, user in entry.get("l", ())]
    return Device(links=links, users={user for _, _, user in links}, shared=bool(entry["s"]))


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
        self.lock = asyncio.Lock()
        self.timers = Timers()
        self.timers_stale = True
        self._generation = 0  # rebalances so far: a timer rebuild spanning one is stale
        # Partitions this worker owns now. The in-memory tables keep what they held for partitions
        # that moved to another worker; timers must only look at customers that are ours.
        self.active: set[int] = set()
        # What a batch changed, written out by _commit() at the batch's end (under the lock).
        self._rows: dict[tuple[Any, ...], list[Any]] = {}
        self._changes: list[list[Any]] = []  # every signed change, for journey_result_changes
        self._dirty: dict[str, CustomerState] = {}
        self._dirty_devices: dict[str, dict[str, Any]] = {}
        # Customer keys merged away in this batch -> their last version (see _fresh).
        self._gone: dict[str, int] = {}
        # Links already sent: SDKs repeat the anonymousId/userId pair on every event after a login.
        # (id, userId) -> the newest link of that pair sent from here: a repeat that is not newer
        # cannot change a customer key (the key follows the newest link), so it is not sent.
        self._sent_links: OrderedDict[tuple[str, str], tuple[Any, Any]] = OrderedDict()
        self._install()

    def source_topics(self) -> list[str]:
        """The topics the agents read (not the tables' changelogs)."""
        topics = (self.touchpoints, self.journey_input, self.links_topic)
        return [t.get_topic_name() for t in topics]

    # -- wiring ----------------------------------------------------------------------------------

    def _install(self) -> None:
        s = self.settings
        batchers = []
        for topic, name, handler in (
            (self.touchpoints, "journeys-ingest", self.on_touchpoints),
            (self.journey_input, "journeys-customers", self.on_journey_input),
            (self.links_topic, "journeys-identity", self.on_links),
        ):
            batcher = Batcher(handler, max_events=s.sink_max_rows, max_seconds=s.sink_max_seconds)
            batchers.append(batcher)
            self.app.agent(topic, name=name)(batcher.consume)

        interval = min(s.timer_interval, s.sink_max_seconds / 2)

        @self.app.timer(interval)
        async def flush() -> None:
            for batcher in batchers:
                await batcher.tick()

        # A timer of its own: a timer rebuild after a restart reads every state held, and raw
        # rows must not wait for it.
        @self.app.timer(interval)
        async def tick() -> None:
            await self.on_tick()

        @self.app.on_partitions_revoked.connect
        async def revoked(app: Any, revoked: Any = None, **kwargs: Any) -> None:
            for batcher in batchers:
                batcher.revoke()
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

    async def on_touchpoints(self, events: list[Any]) -> None:
        """Raw rows to the warehouse; each touchpoint to its customer's journeys."""
        now = now_ms()
        # One row per messageId: of a message's copies in a batch the last one (the table keeps
        # the copy inserted last; within one insert that choice is not ClickHouse's to make).
        rows: dict[str, list[Any]] = {}
        consumed = 0
        by_sender: list[tuple[str, list[Touchpoint]]] = []  # touchpoints with a userId
        by_device: dict[str, list[Touchpoint]] = {}  # anonymous touchpoints
        links: list[Link] = []
        late = 0
        for event in events:
            message = event.message
            try:
                records = decode_records(message.value)
                decoded = [
                    (Touchpoint.from_record(r), links_of(r), str(r.get("user_id") or ""),
                     str(r.get("anonymous_id") or ""))
                    for r in records
                ]  # fmt: skip
                sender = message.key.decode()
                own = [(r["message_id"], touchpoint_row(r, message.partition, message.offset))
                       for r in records]  # fmt: skip
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                self.metrics.undecodable.inc()
                log.warning(
                    "event=undecodable_message partition=%s offset=%s error=%r",
                    message.partition, message.offset, exc,
                )  # fmt: skip
                continue
            for message_id, row in own:
                rows.pop(message_id, None)  # in the dict's order too, the last copy's place
                rows[message_id] = row
            consumed += len(own)
            tps = []
            for tp, tp_links, user, anon in decoded:
                links += tp_links
                if self.engine.is_late(tp, now):
                    late += 1
                    continue
                tp.bits = self.engine.signature(tp)  # before it is stored or forwarded
                if user or not anon:
                    tps.append(tp)
                else:
                    by_device.setdefault(anon, []).append(tp)
            by_sender.append((sender, tps))
        if late:
            self.metrics.late_events.inc(late)
        self.metrics.events_consumed.inc(consumed)
        # The raw rows are written while the journeys are worked out: the insert runs in a
        # thread. The batch is acknowledged only after both, so a crash in between loses nothing
        # (raw rows collapse by message id, and the journeys ignore copies they already hold).
        raw = asyncio.ensure_future(self.touchpoint_sink.write(list(rows.values())))
        try:
            local: dict[str, list[Touchpoint]] = {}
            forward: list[tuple[str, dict[str, Any]]] = []
            async with self.lock:
                # Ownership is looked up under the lock: an ownership notice handled between the
                # lookup and the update would otherwise leave these touchpoints with the old owner.
                for sender, tps in by_sender:
                    self._route(sender, sender, tps, local, forward)
                for device, tps in by_device.items():
                    self._device_touchpoints(device, tps, local, forward)
                self._apply(local, now)
                await self._commit()
            await self._send(forward)
            await self._send_links(links)
        finally:
            await raw

    def _route(
        self,
        key: str,
        here: str,
        tps: list[Touchpoint],
        local: dict[str, list[Touchpoint]],
        forward: list[tuple[str, dict[str, Any]]],
    ) -> None:
        """Touchpoints for customer ``key``: kept in ``local`` when ``key`` is ``here`` (an id of
        this partition) and its own customer, else forwarded (the owner's partition, or
        ``key``'s, which knows its owner)."""
        if not tps:
            return
        owner = self._owner(key) if key == here else key
        if owner == here:
            local.setdefault(owner, []).extend(tps)
        else:
            forward.append((owner, {"kind": "tps", "tps": [tp_to_list(tp) for tp in tps]}))

    def _device_touchpoints(
        self,
        device: str,
        tps: list[Touchpoint],
        local: dict[str, list[Touchpoint]],
        forward: list[tuple[str, dict[str, Any]]],
    ) -> None:
        """A device's new anonymous touchpoints: to the user its links give each of them."""
        entry = self._load_device(device)
        if entry is None or entry["s"]:  # never linked, or shared: the device's own customer
            self._route(device, device, tps, local, forward)
            return
        links = _device_of(entry)
        pool = entry["p"]
        for tp in tps:
            if tp.message_id in pool:
                continue
            owner = links.user_at(tp.order) or device
            pool[tp.message_id] = [tp_to_list(tp), owner]
            self._route(owner, device, [tp], local, forward)
        self._dirty_devices[device] = entry

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

    async def on_journey_input(self, events: list[Any]) -> None:
        await self._changelog_metadata()  # ownership notices write the owners table
        now = now_ms()
        local: dict[str, list[Touchpoint]] = {}
        forward: list[tuple[str, dict[str, Any]]] = []
        async with self.lock:
            for event in events:
                key = event.message.key.decode()
                msg = orjson.loads(event.message.value)
                kind = msg["kind"]
                if kind == "tps":
                    self._route(key, key, [tp_from_list(v) for v in msg["tps"]], local, forward)
                    continue
                self._apply(local, now)  # keep the order of what came before
                local.clear()
                if kind == "owner":
                    await self._take_owner(key, msg["owner"], now)
                elif kind == "drop":
                    self._drop(key, msg["mids"], now, forward)
                elif kind == "device":
                    self._take_device(key, msg, now, forward)
            self._apply(local, now)
            await self._commit()
        await self._send(forward)

    async def _take_owner(self, member: str, owner: str, now: int) -> None:
        """``member`` now belongs to ``owner``: withdraw its results, hand its history over."""
        if member == owner:
            self.owners.pop(member.encode(), None)
            return
        self.owners[member.encode()] = owner
        state = self._load(member)
        if state is None:
            return
        retracted = self.engine.retract_all(state)
        self._stage_rows(retracted, state.version)
        self.journey_metrics.changes(state, retracted)
        self._dirty.pop(member, None)
        self._gone[member] = state.version
        self.metrics.identity_merges.inc()
        await self._send_tps(owner, state.history)

    def _drop(
        self, key: str, mids: list[str], now: int, forward: list[tuple[str, dict[str, Any]]]
    ) -> None:
        """Take touchpoints out of customer ``key`` (an id of this partition)."""
        owner = self._owner(key)
        if owner != key:
            forward.append((owner, {"kind": "drop", "mids": mids}))
            return
        state = self._load(key)
        if state is not None and self.engine.remove(state, mids):
            self._settle(state, now)

    def _take_device(
        self, device: str, msg: dict[str, Any], now: int, forward: list[tuple[str, dict[str, Any]]]
    ) -> None:
        """Device ``device``'s links changed: move the anonymous touchpoints whose owner did."""
        entry = self._load_device(device)
        if entry is None:
            # Its first links: what the device did so far is in its own customer's history.
            entry = {"p": {}}
            state = self._load(device) if self._owner(device) == device else None
            for tp in state.history if state is not None else ():
                entry["p"][tp.message_id] = [tp_to_list(tp), device]
        entry["l"], entry["s"] = msg["links"], msg["shared"]
        links = _device_of(entry)
        moved = 0
        for mid, (raw, old) in sorted(entry["p"].items()):
            tp = tp_from_list(raw)
            new = links.user_at(tp.order) or device
            if new == old:
                continue
            entry["p"][mid] = [raw, new]
            moved += 1
            if old == device:
                self._drop(device, [mid], now, forward)
            else:
                forward.append((old, {"kind": "drop", "mids": [mid]}))
            here: dict[str, list[Touchpoint]] = {}
            self._route(new, device, [tp], here, forward)
            self._apply(here, now)
        self.metrics.identity_moved.inc(moved)
        if entry["s"]:  # shared for good: every anonymous touchpoint stays with the device now
            entry["p"] = {}
        self._dirty_devices[device] = entry

    def _load_device(self, device: str) -> dict[str, Any] | None:
        entry = self._dirty_devices.get(device)
        if entry is not None:
            return entry
        raw = self.devices.get(device.encode())
        return orjson.loads(raw) if raw else None

    # -- the identity graph ----------------------------------------------------------------------

    async def on_links(self, events: list[Any]) -> None:
        """The identity rules (``tracker.core.identity``) over every link: owner notices for
        ids an alias re-keyed, device notices for devices whose attribution changed."""
        await self._changelog_metadata()
        ids = self._identities()
        # Repeats older than this can no longer be split by a late link (see Identities.add).
        horizon = now_ms() - self.engine.lateness_ms - LINK_TRANSIT_MS
        touched: set[str] = set()
        changed: set[str] = set()
        for event in events:
            for from_id, user_id, t, message_id, alias in orjson.loads(event.message.value):
                link = Link(from_id, user_id, t, message_id, bool(alias))
                if link.alias:  # one entry per alias pair, its newest link
                    pair_key = f"{from_id}\x00{user_id}".encode()
                    stored = self.links.get(pair_key)
                    if not stored or Link(*stored).order < link.order:
                        self.links[pair_key] = [from_id, user_id, t, message_id, True]
                was_shared = ids.is_shared(from_id)
                rekeyed, device_changed = ids.add(link, horizon)
                for member, owner in rekeyed:
                    notice = orjson.dumps({"kind": "owner", "owner": owner})
                    await self.journey_input.send(key=member.encode(), value=notice)
                touched.add(from_id)
                if device_changed:
                    changed.add(from_id)
                    if ids.is_shared(from_id) and not was_shared:
                        self.metrics.identity_shared_devices.inc()
        for device in sorted(touched):
            d = ids.devices[device]
            self.links[device.encode()] = {"l": d.links, "s": d.shared}
        for device in sorted(changed):
            d = ids.devices[device]
            notice = orjson.dumps({"kind": "device", "links": d.changes(), "shared": d.shared})
            await self.journey_input.send(key=device.encode(), value=notice)

    def _identities(self) -> Identities:
        if self.identities is None:
            ids = Identities(self.settings.max_users_per_device)
            for key, raw in self.links.items():
                if isinstance(raw, dict):
                    ids.devices[key.decode()] = _device_of(raw)
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
        now = now_ms()
        async with self.lock:
            # At most a batch's worth per tick: after an outage every customer may be due at once.
            for key in sorted(self.timers.due(now, self.settings.sink_max_rows)):
                if not self._is_ours(key):
                    continue
                state = self._load(key)
                if state is not None:
                    self._settle(state, now)
            await self._commit()

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
                          self.engine, self.journey_metrics, self.timers)  # fmt: skip
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
        partition = (murmur2(key.encode()) & 0x7FFFFFFF) % self.settings.topic_partitions
        return partition in self.active

    def _owner(self, key: str) -> str:
        owner = self.owners.get(key.encode())
        return str(owner) if owner else key

    def _load(self, key: str) -> CustomerState | None:
        state = self._dirty.get(key)
        if state is not None:
            return state
        if key in self._gone:
            return None
        raw = self.customers.get(key.encode())
        if not raw:
            return None
        data = orjson.loads(raw)
        return None if "gone" in data else load_state(data, self.engine.fingerprint)

    def _fresh(self, key: str) -> CustomerState:
        """A new state for ``key``. A key can come back after it was merged away (a shared device:
        user 1 logs in, then user 2, then user 1 again); its versions then go on from where the
        old state's stopped, so its rows supersede the withdrawals written under that key. (A
        version that started again at 0 would lose to them, and the results would vanish.)
        """
        version = self._gone.get(key)
        if version is None:
            raw = self.customers.get(key.encode())
            version = int(orjson.loads(raw).get("gone", 0)) if raw else 0
        return CustomerState(key, version=version)

    def _apply(self, batch: dict[str, list[Touchpoint]], now: int) -> None:
        for key in sorted(batch):
            state = self._load(key) or self._fresh(key)
            self._gone.pop(key, None)
            if self.engine.add(state, batch[key]):
                self._settle(state, now)

    def _settle(self, state: CustomerState, now: int) -> None:
        changes = self.engine.settle(state, now)
        self._stage_rows(changes, state.version)
        self._dirty[state.customer] = state
        if state.deadline is not None:
            self.timers.push(state.deadline, state.customer)
        self.journey_metrics.changes(state, changes)

    def _stage_rows(self, changes: Iterable[Change], version: int) -> None:
        for sign, result in changes:
            row = result_row(sign, result, version)
            key = (row[0], row[1], row[2], row[3], row[6], version)
            if sign > 0 or key not in self._rows:  # a new value for a key supersedes its withdrawal
                self._rows[key] = row
            self._changes.append(change_db_row(row, sign))  # the signed table keeps both

    async def _commit(self) -> None:
        """Write the batch's result rows in one insert (and its signed changes in another),
        then record the new states.

        In this order: a state in the changelog always has its rows in the warehouse, so a
        restart never finds a state whose results were not written.
        """
        rows, self._rows = list(self._rows.values()), {}
        changes, self._changes = self._changes, []
        await self.sink.write(rows)
        await self.changes_sink.write(changes)
        await self._changelog_metadata()
        for key, version in self._gone.items():
            # A tombstone that keeps the key's last version (see _fresh); a few dozen bytes.
            self.customers[key.encode()] = _tight(orjson.dumps({"gone": version}))
        for key, state in self._dirty.items():
            self.customers[key.encode()] = _tight(
                orjson.dumps(dump_state(state, self.engine.fingerprint))
            )
        for key, entry in self._dirty_devices.items():
            self.devices[key.encode()] = _tight(orjson.dumps(entry))
        self._gone = {}
        self._dirty = {}
        self._dirty_devices = {}

    async def _changelog_metadata(self) -> None:
        """Table writes look their changelog's partitions up in the producer's metadata without
        waiting for it; on a fresh cluster (or after a rebalance that created the topics) the
        producer may not know them yet, and the write would crash the app. Wait for them."""
        producer = self.app.producer._ensure_producer()
        for table in (self.customers, self.owners, self.devices, self.links):
            topic = table.changelog_topic.get_topic_name()
            if producer.client.cluster.partitions_for_topic(topic) is None:
                await producer.partitions_for(topic)

    async def _send(self, forward: list[tuple[str, dict[str, Any]]]) -> None:
        """Send forwarded messages in order, touchpoints for one key in a row as one message."""
        merged: list[tuple[str, dict[str, Any]]] = []
        for key, msg in forward:
            prev = merged[-1] if merged else None
            if prev is not None and prev[0] == key and prev[1]["kind"] == msg["kind"] == "tps":
                prev[1]["tps"].extend(msg["tps"])
            else:
                merged.append((key, {**msg, "tps": list(msg["tps"])} if "tps" in msg else msg))
        for key, msg in merged:
            await self.journey_input.send(key=key.encode(), value=orjson.dumps(msg))

    async def _send_tps(self, key: str, tps: list[Touchpoint]) -> None:
        if tps:
            value = orjson.dumps({"kind": "tps", "tps": [tp_to_list(tp) for tp in tps]})
            await self.journey_input.send(key=key.encode(), value=value)
