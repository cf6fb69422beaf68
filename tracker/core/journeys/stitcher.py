"""Customers, identities and journeys together: the reference implementation of rules 1-7.

A :class:`Stitcher` owns the customers it has seen: their merged histories, what was emitted for
them, and a heap of the next drop-off deadline per customer, so a clock tick looks only at the
customers that are due (rule 7), never at all of them.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tracker.core.identity import Identities, Link, link_of
from tracker.core.journeys.engine import Change, CustomerState, JourneyEngine, Touchpoint


@dataclass
class IngestReport:
    changes: list[Change] = field(default_factory=list)
    late: int = 0  # records beyond the allowed lateness: stored raw, left out of journeys
    merges: int = 0  # customers folded into another by an identity link


class Stitcher:
    def __init__(self, engine: JourneyEngine) -> None:
        self.engine = engine
        self.identities = Identities()
        self.customers: dict[str, CustomerState] = {}
        self._timers: list[tuple[int, str]] = []

    def ingest(self, records: Iterable[dict[str, Any]], now: int) -> IngestReport:
        report = IngestReport()
        touched: set[str] = set()
        for record in records:
            tp = Touchpoint.from_record(record)
            if self.engine.is_late(tp, now):
                report.late += 1
                continue
            link = link_of(record)
            if link is not None:
                self._link(link, touched, report)
            key = self.identities.key(str(record["user_id"] or record["anonymous_id"]))
            state = self.customers.get(key) or self.customers.setdefault(key, CustomerState(key))
            if self.engine.add(state, [tp]):
                touched.add(key)
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

    def _settle(self, key: str, now: int) -> list[Change]:
        state = self.customers[key]
        changes = self.engine.settle(state, now)
        if state.deadline is not None:
            heapq.heappush(self._timers, (state.deadline, key))
        return changes

    def _link(self, link: Link, touched: set[str], report: IngestReport) -> None:
        before = {self.identities.key(link.from_id), self.identities.key(link.user_id)}
        self.identities.add(link)
        after = self.identities.key(link.user_id)
        for old in sorted(before - {after}):
            state = self.customers.pop(old, None)
            if state is None:
                continue
            report.merges += 1
            report.changes += self.engine.retract_all(state)
            target = self.customers.setdefault(after, CustomerState(after))
            self.engine.add(target, state.history)
            touched.add(after)
