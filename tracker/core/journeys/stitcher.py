"""Customers, identities and journeys together, in one process: rules 1-7 as the worker runs them.

A :class:`Stitcher` drives the worker's own core (:class:`~tracker.core.journeys.customers.
Customers`) in a loop back to itself: the identity graph is kept in memory instead of in the
identity agent, and the messages the worker would send through Kafka (touchpoints forwarded to
their customer, ownership and device notices) are fed straight back in until none is left. So
the unit and property tests that drive it test the code the worker runs. A heap of the next
drop-off deadline per customer lets a clock tick look only at the customers that are due
(rule 7), as the worker's timers do.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tracker.core.identity import MAX_USERS_PER_DEVICE, Identities, Link, links_of
from tracker.core.journeys.customers import Customers, Effects, Message, link_notices
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
        # Live customer states by key: the core's cache, never emptied here, so every customer
        # the stitcher holds is in it (a test may replace a state with an equal one).
        self.customers: dict[str, CustomerState] = {}
        # What the worker's tables would hold: states and tombstones as bytes, device entries
        # as bytes, and the owner of every id an alias merged into another customer.
        self.stored: dict[str, bytes] = {}
        self.devices: dict[str, bytes] = {}
        self.owners: dict[str, str] = {}
        self.core = Customers(
            engine,
            state_bytes=self.stored.get,
            device_bytes=self.devices.get,
            owner_of=self.owners.get,
            cache=self.customers,
        )
        self._timers: list[tuple[int, str]] = []

    def ingest(self, records: Iterable[dict[str, Any]], now: int) -> IngestReport:
        """One batch of touchpoint records, as the worker handles a batch of its input."""
        report = IngestReport()
        by_sender: list[tuple[str, list[Touchpoint]]] = []
        by_device: dict[str, list[Touchpoint]] = {}
        links: list[Link] = []
        for record in records:
            tp = Touchpoint.from_record(record)
            links += links_of(record)
            if self.engine.is_late(tp, now):
                report.late += 1
                continue
            tp.bits = self.engine.signature(tp)
            user, anon = str(record["user_id"] or ""), str(record["anonymous_id"] or "")
            if user or not anon:
                by_sender.append((user or anon, [tp]))
            else:
                by_device.setdefault(anon, []).append(tp)
        self.core.touchpoints(by_sender, by_device, now)
        pending = self._carry_out(self.core.commit(), report)
        notices, _, report.shared = link_notices(
            self.identities, links, now - self.engine.lateness_ms
        )
        pending += notices
        while pending:  # what the worker sends through Kafka comes straight back in
            self.core.journey_input(pending, now)
            pending = self._carry_out(self.core.commit(), report)
        return report

    def tick(self, now: int) -> list[Change]:
        """Emit what came due by ``now``: pops only the customers whose deadline passed."""
        due: set[str] = set()
        while self._timers and self._timers[0][0] < now:
            due.add(heapq.heappop(self._timers)[1])
        self.core.settle_due(sorted(due), now)
        report = IngestReport()
        self._carry_out(self.core.commit(), report)
        return report.changes

    def _carry_out(self, fx: Effects, report: IngestReport) -> list[tuple[str, Message]]:
        """Do what the worker does with a batch's effects; returns the messages to send."""
        report.changes += [(sign, result) for sign, result, _ in fx.changes]
        report.merges += fx.merges
        report.moved += fx.moved
        self.stored.update(fx.states)
        self.devices.update(fx.devices)
        for key, owner in fx.owners.items():
            if owner is None:
                self.owners.pop(key, None)
            else:
                self.owners[key] = owner
        for deadline in fx.deadlines:
            heapq.heappush(self._timers, deadline)
        return fx.forward
