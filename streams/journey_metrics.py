"""Journey metrics of a worker: result counters, durations, signals and open instances.

The engine emits signed result changes: +1 for a new result, -1 for one withdrawn. Counters cannot
go down, so a withdrawn result is counted in the ``*_corrections_total`` twin of its counter, with
the same labels; dashboards take ``increase(results) - increase(corrections)``. Every label set
(journey, kind, stage, signal) exists from the start at 0, so that subtraction always has both
sides.

Open instances per stage are a sum of per-result contributions, so signed changes keep them right:
entering stage L is +1 at L and -1 at L-1; a drop-off at S is -1 at S, a recovery at S +1 at S
(the instance then enters the next stage); a conversion is -1 at the last stage. faust revokes
every partition at a rebalance (and the agents then own none), so the counts are dropped there;
after the rebalance the worker recounts them from the customer states of the partitions it owns.
The gauge reads the counts when scraped. A customer state keeps only its live results (final ones
are folded out, see docs/journeys.md "Bounded state"); a recount adds to them what the folded
past left open: the checkpoint's open instance per journey.

Durations are observed when a result is first emitted; a re-emission under another customer key
(after an identity merge) is observed again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from tracker.core.journeys.definition import Journey
from tracker.core.journeys.engine import Change, Cursor, CustomerState, Past
from tracker.core.journeys.results import Conversion, DropOff, Recovery, Result, StageEntered
from tracker.metrics import Metrics

KINDS = ("stage", "dropoff", "recovery", "advance")  # per stage; conversions have stage ""

_Key = tuple[str, str]  # (journey, stage)


class JourneyMetrics:
    def __init__(self, journeys: Iterable[Journey], metrics: Metrics) -> None:
        self.metrics = metrics
        journeys = tuple(journeys)
        self.stages = {j.name: [s.name for s in j.stages] for j in journeys}
        self.order = [j.name for j in journeys]  # the engine's journey order, as its cursors are
        self.open: Counter[_Key] = Counter()
        # While the open instances are counted again from the stored states (streams/timers.py),
        # whether a customer is still to be counted there: its changes until then must not count.
        self.ahead_of_recount: Callable[[str], bool] | None = None
        # Metric children by (metric, labels): labels() takes a lock and builds a key each time,
        # and this runs for every result. Bounded by the label sets of the definitions.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        for journey in journeys:
            self._create_series(journey)

    def _create_series(self, journey: Journey) -> None:
        m, name = self.metrics, journey.name
        m.journey_results.labels(name, "conversion", "")
        m.journey_corrections.labels(name, "conversion", "")
        m.time_to_convert.labels(name)
        for stage in journey.stages:
            for kind in KINDS:
                m.journey_results.labels(name, kind, stage.name)
                m.journey_corrections.labels(name, kind, stage.name)
            m.time_at_stage.labels(name, stage.name)
            key = (name, stage.name)
            m.open_instances.labels(*key).set_function(lambda key=key: self.open[key])
            for kind, signals in (("pain", journey.pain), ("love", journey.love)):
                for signal in signals:
                    m.journey_signals.labels(name, stage.name, kind, signal.name)
                    m.journey_signal_corrections.labels(name, stage.name, kind, signal.name)

    def _child(self, family: Any, *labels: str) -> Any:
        key = (id(family), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    # -- what the journey agents call --------------------------------------------------------------

    def changes(self, state: CustomerState, changes: list[Change]) -> None:
        """Count ``changes`` of ``state`` (``state.emitted`` already holds the new results)."""
        if not changes:
            return
        withdrawn = {_identity(r) for sign, r in changes if sign < 0}
        entered: dict[tuple[str, str, int], int] | None = None
        ahead = self.ahead_of_recount
        count_open = ahead is None or not ahead(state.customer)
        for sign, result in changes:
            self._count(sign, result)
            if count_open:
                self._open_delta(sign, result)
            if sign < 0 or (withdrawn and _identity(result) in withdrawn):
                continue  # a correction re-emits a result whose duration was observed already
            if isinstance(result, Conversion):
                self._child(self.metrics.time_to_convert, result.journey).observe(
                    result.time_to_convert_ms / 1000
                )
            elif isinstance(result, StageEntered) and result.level > 1:
                if entered is None:
                    entered = _entries(state, self.order)
                since = entered.get((result.journey, result.instance, result.level - 1))
                if since is not None:
                    stage = self.stages[result.journey][result.level - 2]
                    self._child(self.metrics.time_at_stage, result.journey, stage).observe(
                        (result.at - since) / 1000
                    )

    def reset(self) -> None:
        """Forget the open instances: a rebalance took the partitions, or a recount starts."""
        self.open.clear()

    def add_state(self, state: CustomerState) -> None:
        """Count the open instances of a recovered customer state (after :meth:`reset`): those
        its checkpoint left open, moved on by its live results."""
        self._checkpoint(state.cursors, +1)
        for result, n in state.emitted.items():
            self._open_delta(n, result)

    def past(self, past: Past | None, sign: int) -> None:
        """A folded past moves with an identity merge: -1 for the member's (its key goes away),
        +1 for the owner's when ``JourneyEngine.adopt_past`` took it (before the owner settles)."""
        if past is not None:
            self._checkpoint(past.cursors, sign)

    def _checkpoint(self, cursors: list[Cursor] | None, sign: int) -> None:
        """What a folded past leaves open: the open instance of each journey's cursor."""
        for journey, cur in zip(self.order, cursors or (), strict=False):
            inst = cur.inst
            if inst is not None and inst.dropped_at is None:
                self.open[(journey, self.stages[journey][inst.level - 1])] += sign

    def drain(self, counts: Counter[str]) -> None:
        """Move the engine's tallies (``JourneyEngine.counts``) into the metrics."""
        m = self.metrics
        m.journey_hot_keys.inc(counts.pop("hot_keys", 0))
        m.journey_folded.inc(counts.pop("folded", 0))
        m.journey_left_out.labels("behind_fold").inc(counts.pop("left_out_behind_fold", 0))
        m.journey_left_out.labels("hot_key").inc(counts.pop("left_out_hot_key", 0))
        m.journey_pasts_dropped.inc(counts.pop("pasts_dropped", 0))
        m.journey_state_guard.inc(counts.pop("state_guard", 0))

    # -- internals ---------------------------------------------------------------------------------

    def _count(self, sign: int, r: Result) -> None:
        m = self.metrics
        counter = m.journey_results if sign > 0 else m.journey_corrections
        child = self._child
        if isinstance(r, StageEntered):
            child(counter, r.journey, "stage", r.stage).inc()
            if r.level > 1:
                child(counter, r.journey, "advance", self.stages[r.journey][r.level - 2]).inc()
        elif isinstance(r, DropOff):
            child(counter, r.journey, "dropoff", r.stage).inc()
            signals = m.journey_signals if sign > 0 else m.journey_signal_corrections
            for kind, names in (("pain", r.pain), ("love", r.love)):
                for name in names:
                    child(signals, r.journey, r.stage, kind, name).inc()
        elif isinstance(r, Recovery):
            child(counter, r.journey, "recovery", r.stage).inc()
        else:
            child(counter, r.journey, "conversion", "").inc()

    def _open_delta(self, sign: int, r: Result) -> None:
        out = self.open
        if isinstance(r, StageEntered):
            out[(r.journey, r.stage)] += sign
            if r.level > 1:
                out[(r.journey, self.stages[r.journey][r.level - 2])] -= sign
        elif isinstance(r, DropOff):
            out[(r.journey, r.stage)] -= sign
        elif isinstance(r, Recovery):
            out[(r.journey, r.stage)] += sign
        else:
            out[(r.journey, self.stages[r.journey][-1])] -= sign


def _identity(r: Result) -> tuple[type, str, str, int]:
    """What stays the same when a result is corrected: its kind, instance and level."""
    return (type(r), r.journey, r.instance, getattr(r, "level", 0))


def _entries(state: CustomerState, order: list[str]) -> dict[tuple[str, str, int], int]:
    """When each stage of the live instances was entered: from the live results, else (an
    instance open across the cut) from the checkpoint."""
    out = {}
    for journey, cur in zip(order, state.cursors or (), strict=False):
        if cur.inst is not None:
            out[(journey, cur.inst.instance, cur.inst.level)] = cur.inst.entered_at
    for r in state.emitted:
        if isinstance(r, StageEntered):
            out[(r.journey, r.instance, r.level)] = r.at
    return out
