"""The customers of one partition, without I/O: what the journey worker runs, and what the
reference :class:`~tracker.core.journeys.stitcher.Stitcher` runs in a loop back to itself.

Inputs, each under the caller's lock:

- :meth:`Customers.touchpoints`: a batch of new touchpoints, by sender (touchpoints with a userId,
  or with no id but the sender's) and by device (anonymous touchpoints);
- :meth:`Customers.journey_input`: messages of the journey-input topic, in order: touchpoints
  forwarded to their customer (``tps``), ``move`` notices (a link gave these touchpoints to
  another customer: take them out here, send them on), ``owner`` notices (this id now belongs to
  customer K) and ``device`` notices (this device's links changed);
- :meth:`Customers.settle_due`: customers whose deadline came.

:meth:`Customers.commit` then hands over what they changed as :class:`Effects`: signed result
changes with their versions, states and tombstones to write (as the bytes to store), device
entries to write, owner changes, messages to forward and deadlines. The caller writes the result
rows before the states (a state in the changelog always has its rows in the warehouse) and sends
the forwarded messages before the states too (a merged-away state's tombstone is never written
before its history is on its way to the owner).

Reads go through three callables (the stored bytes of a customer or a device, and an id's owner)
and a cache of live :class:`CustomerState` objects; within a batch the core reads its own
writes. Where the identity graph lives is the caller's business: the worker keeps it in one
agent, the Stitcher in memory; :func:`link_notices` turns links into the notices both send.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from tracker.core.identity import Device, Identities, Link
from tracker.core.journeys.codec import (
    dump_bounded,
    dump_past,
    load_past,
    load_state,
    tp_to_list,
    tps_from_lists,
)
from tracker.core.journeys.engine import Change, CustomerState, JourneyEngine, Past, Touchpoint
from tracker.core.journeys.results import Result

Message = dict[str, Any]  # a journey-input message, as JSON
# Kafka's default limit on a message is about 1 MB (faust's producer: 1,000,000 bytes; the
# broker: 1,048,588). A state is never written above this: see Customers.commit.
STATE_WRITE_MAX_BYTES = 900_000
# Devices known to have no entry (never linked here), so their anonymous touchpoints skip the
# store lookup; forgotten all at once past this many.
UNLINKED_KNOWN = 100_000


@dataclass
class Effects:
    """What one batch changed, for the caller to carry out."""

    changes: list[tuple[int, Result, int]] = field(default_factory=list)  # (sign, result, version)
    states: dict[str, bytes] = field(default_factory=dict)  # customer key -> state or tombstone
    devices: dict[str, bytes] = field(default_factory=dict)  # device id -> its entry
    owners: dict[str, str | None] = field(default_factory=dict)  # id -> owner (None: itself)
    forward: list[tuple[str, Message]] = field(default_factory=list)  # (key, message), in order
    deadlines: list[tuple[int, str]] = field(default_factory=list)  # (deadline, customer key)
    refused: list[tuple[str, int]] = field(default_factory=list)  # states too big: (key, bytes)
    merges: int = 0  # customers merged into another by an alias
    moved: int = 0  # anonymous touchpoints moved to another customer by a device's links
    customer_batches: int = 0  # customers worked on, one per customer per batch


class StateCache(OrderedDict[str, CustomerState]):
    """The most recently used customer states, as objects, at most ``size`` of them."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get(self, key: str, default: Any = None) -> Any:
        state = super().get(key)
        if state is None:
            return default
        self.move_to_end(key)
        return state

    def __setitem__(self, key: str, state: CustomerState) -> None:
        if key in self:
            self.move_to_end(key)
            super().__setitem__(key, state)
            return
        super().__setitem__(key, state)  # a new key goes last
        if len(self) > self.size:
            self.popitem(last=False)


def device_of(entry: Mapping[str, Any]) -> Device:
    """A device's links as a stored entry or a device notice holds them."""
    links = [(int(t), str(mid), str(user)) for t, mid, user in entry.get("l", ())]
    return Device(links=links, users={user for _, _, user in links}, shared=bool(entry["s"]))


def tps_message(tps: Iterable[Touchpoint]) -> Message:
    """Touchpoints forwarded to their customer's partition.

    The message may also carry ``"past"``: what a merged-away customer's state folded away, for
    the owner to adopt (see ``Customers._take_owner``).
    """
    return {"kind": "tps", "tps": [tp_to_list(tp) for tp in tps]}


def link_notices(
    ids: Identities, links: Iterable[Link], horizon: int
) -> tuple[list[tuple[str, Message]], set[str], int]:
    """Add ``links`` to the identity graph. Returns the notices to send (key, message): an
    ``owner`` notice for every id an alias re-keyed, in order, then a ``device`` notice for
    every device whose attribution changed; the devices touched; and how many devices became
    shared."""
    notices: list[tuple[str, Message]] = []
    touched: set[str] = set()
    changed: set[str] = set()
    shared = 0
    for link in links:
        was_shared = ids.is_shared(link.from_id)
        rekeyed, device_changed = ids.add(link, horizon)
        notices += [(member, {"kind": "owner", "owner": owner}) for member, owner in rekeyed]
        touched.add(link.from_id)
        if device_changed:
            changed.add(link.from_id)
            shared += ids.is_shared(link.from_id) and not was_shared
    for device in sorted(changed):
        d = ids.devices[device]
        notices.append((device, {"kind": "device", "links": d.changes(), "shared": d.shared}))
    return notices, touched, shared


class Customers:
    """Customer states and device entries of the partitions held here, and the rules that
    move touchpoints between them. See the module docstring."""

    def __init__(
        self,
        engine: JourneyEngine,
        *,
        state_bytes: Callable[[str], bytes | None],
        device_bytes: Callable[[str], bytes | None],
        owner_of: Callable[[str], str | None],
        cache: MutableMapping[str, CustomerState],
        on_changes: Callable[[CustomerState, list[Change]], None] | None = None,
        on_past: Callable[[Past | None, int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self._state_bytes = state_bytes
        self._device_bytes = device_bytes
        self._owner_of = owner_of
        self._on_changes = on_changes
        self._on_past = on_past
        self._now = 0  # the clock of the latest input: folds in commit() use it
        # A device's anonymous touchpoints are kept while a link can still move them: a
        # touchpoint older than the allowed lateness plus the longest window is in no instance
        # that data still arriving can change.
        windows = [j.window_ms for j in engine.journeys]
        self.pool_horizon_ms = engine.lateness_ms + max(windows, default=0)
        self._fx = Effects()
        self._dirty: dict[str, CustomerState] = {}
        self._gone: dict[str, int] = {}  # keys merged away in this batch -> their last version
        self._devices: dict[str, dict[str, Any]] = {}
        # Devices whose entry was looked up and is absent. Only this class writes device
        # entries (``_take_device``, which takes the device out of here), so the answer holds
        # until the stores change under it: :meth:`forget_cached`.
        self._unlinked: set[str] = set()

    def forget_cached(self) -> None:
        """Drop what is held of the stores (states as objects, devices known unlinked): the
        partitions changed hands, and recovery may replace what is stored."""
        self.cache.clear()
        self._unlinked.clear()

    # -- inputs ------------------------------------------------------------------------------------

    def touchpoints(
        self,
        by_sender: Iterable[tuple[str, list[Touchpoint]]],
        by_device: Mapping[str, list[Touchpoint]],
        now: int,
    ) -> None:
        """New touchpoints (with their rule bits): by the id they were sent under, and, for
        anonymous ones, by device."""
        self._now = now
        local: dict[str, list[Touchpoint]] = {}
        for sender, tps in by_sender:
            self._route(sender, sender, tps, local)
        for device, tps in by_device.items():
            self._device_touchpoints(device, tps, local, now)
        self._apply(local, now)

    def journey_input(self, messages: Iterable[tuple[str, Message]], now: int) -> None:
        """Messages of the journey-input topic, each with its key, in their order."""
        self._now = now
        local: dict[str, list[Touchpoint]] = {}
        for key, msg in messages:
            kind = msg["kind"]
            if kind == "tps" and "past" not in msg:
                self._route(key, key, tps_from_lists(msg["tps"]), local)
                continue
            self._apply(local, now)  # keep the order of what came before
            local.clear()
            if kind == "tps":
                self._adopt(key, msg, now)
            elif kind == "owner":
                self._take_owner(key, msg["owner"], now)
            elif kind == "move":
                self._move(key, key, msg, now)
            elif kind == "drop":  # from workers before moves were one message
                self._drop(key, msg["mids"], now)
            elif kind == "device":
                self._take_device(key, msg, now)
        self._apply(local, now)

    def settle_due(self, keys: Iterable[str], now: int) -> None:
        """Customers whose deadline came (keys merged away meanwhile are skipped).

        A key that belongs to another customer is skipped even when its state is still live:
        after a crash between an owner notice's owner entry and its tombstone, the notice comes
        again and moves that state; until then it must not be held (see ``_owner``)."""
        self._now = now
        for key in keys:
            if self._owner(key) != key:
                continue
            state = self._load(key)
            if state is not None:
                state.deadline = None  # its timer fired: a deadline still ahead is set again
                self._settle(state, now)

    def commit(self) -> Effects:
        """What the batch changed since the last commit, with the states to write as bytes.

        A state is never written above ``STATE_WRITE_MAX_BYTES`` (Kafka would refuse it, and the
        partition would stop at it): the engine's bounds keep states far below that, so this
        is a last guard. A refused state is listed in ``Effects.refused`` and stays in the cache;
        the changelog keeps its previous state.
        """
        fx = self._fx
        for key, version in self._gone.items():
            # A tombstone that keeps the key's last version (see _load); a few dozen bytes.
            fx.states[key] = _tight(orjson.dumps({"gone": version}))
        for key, state in self._dirty.items():
            # Over the engine's byte bound the state is folded completely: those changes are
            # rows of this batch, written before the state.
            raw, changes = dump_bounded(self.engine, state, self._now)
            if changes:
                self._changed(state, changes)
                if state.deadline is not None:
                    fx.deadlines.append((state.deadline, key))
            if len(raw) > STATE_WRITE_MAX_BYTES:
                fx.refused.append((key, len(raw)))
                continue
            fx.states[key] = _tight(raw)
        for key, entry in self._devices.items():
            fx.devices[key] = _tight(orjson.dumps(entry))
        self._gone, self._dirty, self._devices = {}, {}, {}
        self._fx = Effects()
        return fx

    # -- routing -----------------------------------------------------------------------------------

    def _route(
        self, key: str, here: str, tps: list[Touchpoint], local: dict[str, list[Touchpoint]]
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
            self._fx.forward.append((owner, tps_message(tps)))

    def _device_touchpoints(
        self, device: str, tps: list[Touchpoint], local: dict[str, list[Touchpoint]], now: int
    ) -> None:
        """A device's new anonymous touchpoints: to the user its links give each of them."""
        entry = self._load_device(device)
        if entry is None or entry["s"]:  # never linked, or shared: the device's own customer
            self._route(device, device, tps, local)
            return
        links = device_of(entry)
        pool = entry["p"]
        for tp in tps:
            if tp.message_id in pool:
                continue
            owner = links.user_at(tp.order) or device
            pool[tp.message_id] = [tp_to_list(tp), owner]
            self._route(owner, device, [tp], local)
        self._prune(pool, now)
        self._devices[device] = entry

    def _prune(self, pool: dict[str, list[Any]], now: int) -> None:
        horizon = now - self.pool_horizon_ms
        for mid in [mid for mid, (raw, _) in pool.items() if raw[0] < horizon]:
            del pool[mid]

    # -- ownership notices -------------------------------------------------------------------------

    def _take_owner(self, member: str, owner: str, now: int) -> None:
        """``member`` now belongs to ``owner``: withdraw its results, hand its history over."""
        if member == owner:
            self._fx.owners[member] = None
            return
        self._fx.owners[member] = owner
        state = self._load(member)
        if state is None:
            return
        self._changed(state, self.engine.retract_all(state))
        self._dirty.pop(member, None)
        self.cache.pop(member, None)
        self._gone[member] = state.version
        self._fx.merges += 1
        past = dump_past(state)
        if self._on_past is not None:
            self._on_past(self.engine.past(state), -1)
        if state.history or past is not None:
            msg = tps_message(state.history)
            if past is not None:  # what the state folded away goes along (see _adopt)
                msg["past"] = past
            self._fx.forward.append((owner, msg))

    def _adopt(self, key: str, msg: Message, now: int) -> None:
        """A merged-away customer's history with its folded past: the owner takes both."""
        owner = self._owner(key)
        if owner != key:
            self._fx.forward.append((owner, msg))
            return
        state = self._load_or_new(key)
        self._gone.pop(key, None)
        past = load_past(msg["past"])
        if self.engine.adopt_past(state, past) and self._on_past is not None:
            self._on_past(past, +1)
        self.engine.add(state, tps_from_lists(msg["tps"]))
        self._settle(state, now)

    def _drop(self, key: str, mids: list[str], now: int) -> None:
        """Take touchpoints out of customer ``key`` (an id of this partition)."""
        owner = self._owner(key)
        if owner != key:
            self._fx.forward.append((owner, {"kind": "drop", "mids": mids}))
            return
        state = self._load(key)
        if state is not None and self.engine.remove(state, mids):
            self._settle(state, now)

    def _move(self, key: str, here: str, msg: Message, now: int) -> None:
        """Move touchpoints from customer ``key`` to ``msg["to"]``: taken out where ``key``'s
        touchpoints are, then sent on from there. (A drop sent to the old customer beside the
        touchpoints sent to the new one could reach a customer after them, when both lead to
        the same customer by different ways, and take them out again.)"""
        owner = self._owner(key) if key == here else key
        if owner != here:
            self._fx.forward.append((owner, msg))
            return
        state = self._load(key)
        if state is not None and self.engine.remove(state, msg["mids"]):
            self._settle(state, now)
        local: dict[str, list[Touchpoint]] = {}
        self._route(msg["to"], here, tps_from_lists(msg["tps"]), local)
        self._apply(local, now)

    def _take_device(self, device: str, msg: Message, now: int) -> None:
        """Device ``device``'s links changed: move the anonymous touchpoints whose owner did."""
        entry = self._load_device(device)
        self._unlinked.discard(device)
        if entry is None:
            # Its first links: what the device did so far is in its own customer's history.
            entry = {"p": {}}
            state = self._load(device) if self._owner(device) == device else None
            for tp in state.history if state is not None else ():
                entry["p"][tp.message_id] = [tp_to_list(tp), device]
        entry["l"], entry["s"] = msg["links"], msg["shared"]
        self._prune(entry["p"], now)
        links = device_of(entry)
        # One move per (from, to) pair: a move settles the customer it takes touchpoints from,
        # so one per touchpoint settled a device's customer once for each of them at a login.
        moves: dict[tuple[str, str], Message] = {}
        for mid, (raw, old) in sorted(entry["p"].items()):
            new = links.user_at((raw[0], mid)) or device
            if new == old:
                continue
            entry["p"][mid] = [raw, new]
            self._fx.moved += 1
            move = moves.setdefault((old, new), {"kind": "move", "mids": [], "to": new, "tps": []})
            move["mids"].append(mid)
            move["tps"].append(raw)
        for (old, _), move in moves.items():
            self._move(old, device, move, now)
        if entry["s"]:  # shared for good: every anonymous touchpoint stays with the device now
            entry["p"] = {}
        self._devices[device] = entry

    # -- states ------------------------------------------------------------------------------------

    def _owner(self, key: str) -> str:
        if key in self._fx.owners:
            return self._fx.owners[key] or key
        if key in self.cache:
            # A state held as an object is its own customer's: an owner notice takes it out
            # (``_take_owner``), and only those notices give an id another owner.
            return key
        return self._owner_of(key) or key

    def _load(self, key: str) -> CustomerState | None:
        return self._find(key)[0]

    def _load_or_new(self, key: str) -> CustomerState:
        state, version = self._find(key)
        return state if state is not None else CustomerState(key, version=version)

    def _find(self, key: str) -> tuple[CustomerState | None, int]:
        """``key``'s state, or None and the version a new state for it starts from.

        A key can come back after it was merged away (a shared device: user 1 logs in, then
        user 2, then user 1 again); a new state's versions then go on from where the old
        state's stopped, so its rows supersede the withdrawals written under that key. (A
        version that started again at 0 would lose to them, and the results would vanish.)
        """
        state = self._dirty.get(key)
        if state is not None:
            return state, 0
        gone = self._gone.get(key)
        if gone is None:
            state = self.cache.get(key)
            if state is not None:
                return state, 0
            raw = self._state_bytes(key)
            data = orjson.loads(raw) if raw else None
            if data is not None and "gone" not in data:
                state = self.cache[key] = load_state(data, self.engine.fingerprint)
                return state, 0
            gone = int(data["gone"]) if data is not None else 0
        return None, gone

    def _load_device(self, device: str) -> dict[str, Any] | None:
        entry = self._devices.get(device)
        if entry is not None:
            return entry
        if device in self._unlinked:
            return None
        raw = self._device_bytes(device)
        if not raw:
            if len(self._unlinked) >= UNLINKED_KNOWN:
                self._unlinked.clear()
            self._unlinked.add(device)
            return None
        stored: dict[str, Any] = orjson.loads(raw)
        return stored

    def _apply(self, batch: dict[str, list[Touchpoint]], now: int) -> None:
        self._fx.customer_batches += len(batch)
        for key in sorted(batch):
            state = self._load_or_new(key)
            self._gone.pop(key, None)
            if self.engine.add(state, batch[key]):
                self._settle(state, now)

    def _settle(self, state: CustomerState, now: int) -> None:
        """Settle ``state`` as of ``now``; its deadline goes to the timers when it changed (a
        timer set before still stands)."""
        key = state.customer
        before = state.deadline
        self._changed(state, self.engine.settle(state, now))
        self._dirty[key] = self.cache[key] = state
        if state.deadline is not None and state.deadline != before:
            self._fx.deadlines.append((state.deadline, key))

    def _changed(self, state: CustomerState, changes: list[Change]) -> None:
        self._fx.changes += [(sign, result, state.version) for sign, result in changes]
        if self._on_changes is not None:
            self._on_changes(state, changes)


def _tight(value: bytes) -> bytes:
    """A copy of exactly its length: orjson's result keeps a buffer of several KB behind it,
    which held for every customer would cost more than the state itself."""
    return bytes(memoryview(value))
