"""Customers, identities and journeys together: the reference implementation of rules 1-7.

A :class:`Stitcher` owns the customers it has seen: their histories, what was emitted for them,
and a heap of the next drop-off deadline per customer, so a clock tick looks only at the
customers that are due (rule 7), never at all of them. It also keeps every device's anonymous
touchpoints with the id each is attributed to, so that a link arriving late can move exactly
those whose owner it changes.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tracker.core.identity import MAX_USERS_PER_DEVICE, Identities, Link, links_of
from tracker.core.journeys.engine import Change, CustomerState, JourneyEngine, Touchpoint


@dataclass
class IngestReport:
    changes: list[Change] = field(default_factory=list)
    late: int = 0  # records beyond the allowed lateness: stored raw, left out of journeys
    merges: int = 0  # customers folded into another by an alias
    moved: int = 0  # anonymous touchpoints moved to another customer by a device link
    shared: int = 0  # devices found shared by this ingest


class Stitcher:
    def __init__(self, engine: JourneyEngine, *, max_users: int = MAX_USERS_PER_DEVICE) -> None:
        self.engine = engine
        self.identities = Identities(max_users)
        self.customers: dict[str, CustomerState] = {}
        # anonymousId -> messageId -> (touchpoint, the id it is attributed to, before aliases)
        self.devices: dict[str, dict[str, tuple[Touchpoint, str]]] = {}
        self._timers: list[tuple[int, str]] = []

    def ingest(self, records: Iterable[dict[str, Any]], now: int) -> IngestReport:
        report = IngestReport()
        touched: set[str] = set()
        for record in records:
            tp = Touchpoint.from_record(record)
            if self.engine.is_late(tp, now):
                report.late += 1
                continue
            for link in links_of(record):
                self._link(link, now, touched, report)
            user, anon = str(record["user_id"] or ""), str(record["anonymous_id"] or "")
            owner = self.identities.owner(user, anon, tp.order)
            if not user:
                pool = self.devices.setdefault(anon, {})
                if tp.message_id in pool:
                    continue
                tp.bits = self.engine.signature(tp)
                pool[tp.message_id] = (tp, owner)
            if self.engine.add(self._customer(owner), [tp]):
                touched.add(self.identities.user_key(owner))
        for key in sorted(touched & self.customers.keys()):  # some were merged away meanwhile
            report.changes += self._settle(key, now)
        return report

    def tick(self, now: int) -> list[Change]:
        """Emit what came due by ``now``: pops only the customers whose deadline passed."""
        due: set[str] = set()
        while self._timers and self._timers[0][0] < now:
            due.add(heapq.heappop(self._timers)[1])
        changes: list[Change] = []
        for key in sorted(due):
            if key in self.customers:  # a merged-away customer's timer is stale
                changes += self._settle(key, now)
        return changes

    def _customer(self, owner: str) -> CustomerState:
        key = self.identities.user_key(owner)
        return self.customers.get(key) or self.customers.setdefault(key, CustomerState(key))

    def _settle(self, key: str, now: int) -> list[Change]:
        state = self.customers[key]
        changes = self.engine.settle(state, now)
        if state.deadline is not None:
            heapq.heappush(self._timers, (state.deadline, key))
        return changes

    def _link(self, link: Link, now: int, touched: set[str], report: IngestReport) -> None:
        ids = self.identities
        before = {ids.user_key(link.from_id), ids.user_key(link.user_id)}
        was_shared = ids.is_shared(link.from_id)
        rekeyed, device_changed = ids.add(link, horizon=now - self.engine.lateness_ms)
        after = ids.user_key(link.user_id)
        for old in sorted(before - {after} if rekeyed else ()):
            state = self.customers.pop(old, None)
            if state is None:
                continue
            report.merges += 1
            report.changes += self.engine.retract_all(state)
            owner = self._customer(after)
            self.engine.adopt_past(owner, self.engine.past(state))  # False: counted in engine
            self.engine.add(owner, state.history)
            touched.add(after)
        if device_changed:
            report.shared += ids.is_shared(link.from_id) and not was_shared
            report.moved += self._place(link.from_id, touched)

    def _place(self, anon: str, touched: set[str]) -> int:
        """Move the device's anonymous touchpoints whose owner changed; returns how many."""
        pool = self.devices.get(anon, {})
        moved = 0
        for mid, (tp, owner) in sorted(pool.items()):
            new = self.identities.owner("", anon, tp.order)
            if new == owner:
                continue
            old_key = self.identities.user_key(owner)
            self.engine.remove(self.customers[old_key], [mid])
            self.engine.add(self._customer(new), [tp])
            pool[mid] = (tp, new)
            touched |= {old_key, self.identities.user_key(new)}
            moved += 1
        return moved
