"""Journey metrics from the engine's signed changes, each on a fresh registry."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from itertools import count
from typing import Any

import pytest
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from streams.journey_metrics import JourneyMetrics
from streams.lag import lags, publish_lags
from tracker.core.journeys.definition import loads
from tracker.core.journeys.engine import CustomerState, JourneyEngine, Touchpoint
from tracker.core.journeys.results import Conversion, DropOff, StageEntered
from tracker.metrics import Metrics

MIN = 60_000
JOURNEYS = loads(
    """
journeys:
  - name: shop
    window: 1h
    stages:
      - {name: browse, match: {event: Product Viewed}, timeout: 10m}
      - {name: cart, match: {event: Product Added}, timeout: 5m}
      - {name: paid, match: {event: Order Completed}}
    pain:
      - {name: payment_failed, match: {event: Payment Failed}}
    love:
      - {name: helpful_chat, match: {event: Chat Rated}}
"""
)
_ids = count()


class Fixture:
    def __init__(self, lateness_ms: int = 10**12) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.engine = JourneyEngine(JOURNEYS, lateness_ms=lateness_ms)
        self.observed = JourneyMetrics(JOURNEYS, self.metrics)
        self.states: dict[str, CustomerState] = {}
        # Every result ever emitted per customer (the states keep only the live ones).
        self.emitted: dict[str, Counter[Any]] = {}
        self.moved_past = False  # a merge took a folded past away (its open instance with it)

    def send(self, customer: str, now_min: float, *events: tuple[float, str]) -> None:
        state = self.states.setdefault(customer, CustomerState(customer))
        tps = [
            Touchpoint(int(m * MIN), f"m{next(_ids)}", "track", e, "web", "", {}) for m, e in events
        ]
        self.engine.add(state, tps)
        self._count(state, self.engine.settle(state, int(now_min * MIN)))

    def merge_away(self, customer: str) -> None:
        state = self.states.pop(customer)
        self._count(state, self.engine.retract_all(state))
        past = self.engine.past(state)
        self.observed.past(past, -1)  # no owner here takes it
        self.moved_past = past is not None
        del self.emitted[customer]  # its final results stay under its key; none are open

    def _count(self, state: CustomerState, changes: list[Any]) -> None:
        self.observed.changes(state, changes)
        total = self.emitted.setdefault(state.customer, Counter())
        for sign, r in changes:
            total[r] += sign

    def value(self, name: str, **labels: str) -> float:
        got = self.registry.get_sample_value(name, labels)
        assert got is not None, f"no sample {name}{labels}"
        return got

    def net(self, kind: str, stage: str, journey: str = "shop") -> float:
        labels = {"journey": journey, "kind": kind, "stage": stage}
        return self.value("tracker_journey_results_total", **labels) - self.value(
            "tracker_journey_corrections_total", **labels
        )

    def open(self, stage: str) -> float:
        return self.value("tracker_journey_open_instances", journey="shop", stage=stage)


@pytest.fixture
def fx() -> Fixture:
    return Fixture()


def test_every_label_set_exists_at_zero_before_any_traffic(fx: Fixture) -> None:
    for stage in ("browse", "cart", "paid"):
        for kind in ("stage", "dropoff", "recovery", "advance"):
            assert fx.net(kind, stage) == 0
        assert fx.open(stage) == 0
        for kind, signal in (("pain", "payment_failed"), ("love", "helpful_chat")):
            labels = {"journey": "shop", "stage": stage, "kind": kind, "signal": signal}
            assert fx.value("tracker_journey_signals_total", **labels) == 0
            assert fx.value("tracker_journey_signal_corrections_total", **labels) == 0
    assert fx.net("conversion", "") == 0
    assert fx.value("tracker_journey_time_to_convert_seconds_count", journey="shop") == 0


def test_a_conversion_counts_entries_advances_and_durations(fx: Fixture) -> None:
    fx.send("c1", 4, (0, "Product Viewed"), (1, "Product Added"), (3, "Order Completed"))
    assert [fx.net("stage", s) for s in ("browse", "cart", "paid")] == [1, 1, 1]
    assert [fx.net("advance", s) for s in ("browse", "cart", "paid")] == [1, 1, 0]
    assert fx.net("conversion", "") == 1
    assert [fx.open(s) for s in ("browse", "cart", "paid")] == [0, 0, 0]
    assert fx.value("tracker_journey_time_to_convert_seconds_sum", journey="shop") == 180
    assert (
        fx.value("tracker_journey_time_at_stage_seconds_sum", journey="shop", stage="browse") == 60
    )
    assert (
        fx.value("tracker_journey_time_at_stage_seconds_sum", journey="shop", stage="cart") == 120
    )


def test_open_instances_follow_stages_drop_offs_and_recoveries(fx: Fixture) -> None:
    fx.send("c1", 1, (0, "Product Viewed"))
    fx.send("c2", 2, (0, "Product Viewed"), (1, "Product Added"))
    assert (fx.open("browse"), fx.open("cart")) == (1, 1)
    # c1's browse deadline (10 min) passes, with a pain signal seen at that stage.
    fx.send("c1", 11, (5, "Payment Failed"))
    assert (fx.net("dropoff", "browse"), fx.open("browse")) == (1, 0)
    pain = {"journey": "shop", "stage": "browse", "kind": "pain", "signal": "payment_failed"}
    assert fx.value("tracker_journey_signals_total", **pain) == 1
    # c1 comes back and adds to the cart: a recovery at browse, open at cart.
    fx.send("c1", 12, (12, "Product Added"))
    assert fx.net("recovery", "browse") == 1
    assert (fx.open("browse"), fx.open("cart")) == (0, 2)


def test_a_late_touchpoint_withdraws_a_drop_off_and_its_signals(fx: Fixture) -> None:
    fx.send("c1", 11, (0, "Product Viewed"), (5, "Payment Failed"))
    assert fx.net("dropoff", "browse") == 1
    # A touchpoint from before the deadline shows the customer had moved on in time.
    fx.send("c1", 11, (8, "Product Added"))
    assert fx.value(
        "tracker_journey_corrections_total", journey="shop", kind="dropoff", stage="browse"
    ) == 1  # fmt: skip
    assert fx.net("dropoff", "browse") == 0
    pain = {"journey": "shop", "stage": "browse", "kind": "pain", "signal": "payment_failed"}
    assert fx.value("tracker_journey_signals_total", **pain) == 1
    assert fx.value("tracker_journey_signal_corrections_total", **pain) == 1
    assert (fx.open("browse"), fx.open("cart")) == (0, 1)


def test_a_corrected_conversion_is_observed_once(fx: Fixture) -> None:
    fx.send("c1", 5, (0, "Product Viewed"), (1, "Product Added"), (4, "Order Completed"))
    # An earlier order arrives late: the conversion moves from minute 4 to minute 2.
    fx.send("c1", 5, (2, "Order Completed"))
    assert fx.value(
        "tracker_journey_corrections_total", journey="shop", kind="conversion", stage=""
    ) == 1  # fmt: skip
    assert fx.net("conversion", "") == 1
    assert fx.value("tracker_journey_time_to_convert_seconds_count", journey="shop") == 1


def test_a_merged_customer_is_withdrawn_everywhere(fx: Fixture) -> None:
    fx.send("anon", 2, (0, "Product Viewed"), (1, "Product Added"))
    fx.merge_away("anon")
    assert fx.net("stage", "browse") == 0
    assert fx.net("advance", "browse") == 0
    assert (fx.open("browse"), fx.open("cart")) == (0, 0)


def test_a_rebalance_drops_the_counts_and_a_recount_restores_those_owned(fx: Fixture) -> None:
    for i in range(6):
        fx.send(f"c{i}", 1, (0, "Product Viewed"), *([(0.5, "Product Added")] if i < 2 else []))
    assert (fx.open("browse"), fx.open("cart")) == (4, 2)
    fx.observed.reset()  # the partitions were revoked
    assert (fx.open("browse"), fx.open("cart")) == (0, 0)
    # The worker now owns the partitions of c0, c2 and c3: it recounts their recovered states.
    for key in ("c0", "c2", "c3"):
        fx.observed.add_state(fx.states[key])
    assert (fx.open("browse"), fx.open("cart")) == (2, 1)
    # Live changes carry on from the recounted figures.
    fx.send("c2", 2, (1, "Product Added"))
    assert (fx.open("browse"), fx.open("cart")) == (1, 2)


def test_consumer_lag_is_highwater_minus_committed_for_owned_partitions() -> None:
    metrics = Metrics(CollectorRegistry())
    a, b, c = TP("t", 0), TP("t", 1), TP("t", 2)

    class Consumer:
        def __init__(self) -> None:
            self._committed_offset: dict[Any, int | None] = {a: 90, b: 10, c: None}
            self.owned = {a, b, c}

        def highwater(self, part: Any) -> int:
            return {0: 100, 1: 10, 2: 5}[part.partition]

        def assignment(self) -> set[Any]:
            return self.owned

    consumer = Consumer()
    assert lags(consumer, {a, b, c}) == {("t", 0): 10, ("t", 1): 0}
    publish_lags(metrics, consumer)
    value = metrics.registry.get_sample_value
    assert value("tracker_consumer_lag_messages", {"topic": "t", "partition": "0"}) == 10
    consumer.owned = {b}
    publish_lags(metrics, consumer)
    assert value("tracker_consumer_lag_messages", {"topic": "t", "partition": "0"}) is None
    assert value("tracker_consumer_lag_messages", {"topic": "t", "partition": "1"}) == 0


def _open_oracle(emitted: Iterable[Counter[Any]]) -> Counter[tuple[str, str]]:
    """Open instances from scratch: per instance, the furthest stage entered, unless the instance
    converted or dropped off at that stage."""
    out: Counter[tuple[str, str]] = Counter()
    for results in emitted:
        furthest: dict[tuple[str, str], StageEntered] = {}
        closed: set[tuple[str, str, int]] = set()
        for r in +results:
            if isinstance(r, StageEntered):
                key = (r.journey, r.instance)
                if key not in furthest or r.level > furthest[key].level:
                    furthest[key] = r
            elif isinstance(r, DropOff):
                closed.add((r.journey, r.instance, r.level))
            elif isinstance(r, Conversion):
                closed.add((r.journey, r.instance, -1))
        for (journey, instance), r in furthest.items():
            if not {(journey, instance, r.level), (journey, instance, -1)} & closed:
                out[(journey, r.stage)] += 1
    return out


EVENTS = ["Product Viewed", "Product Added", "Order Completed", "Payment Failed", "Chat Rated"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),  # customer
            st.lists(st.tuples(st.integers(0, 40), st.sampled_from(EVENTS)), max_size=4),
            st.integers(0, 60),  # minutes the clock advances by
        ),
        max_size=12,
    ),
    st.sampled_from(["a", "b", "c", None]),  # a customer merged away at the end
    st.sampled_from([10**12, 5 * MIN]),  # the allowed lateness: 5 min folds as the clock runs
)
def test_live_open_counts_equal_a_recount_and_the_definition(
    steps: list[tuple[str, list[tuple[int, str]], int]], merged: str | None, lateness: int
) -> None:
    fx = Fixture(lateness)
    now = 0
    for customer, events, advance in steps:
        now += advance
        fx.send(customer, now, *((now - min(m, 5), e) for m, e in events))
    if merged in fx.states:
        fx.merge_away(merged)
    stages = ("browse", "cart", "paid")
    expected = _open_oracle(fx.emitted.values())
    assert [fx.open(s) for s in stages] == [expected[("shop", s)] for s in stages]
    fx.observed.reset()
    for state in fx.states.values():
        fx.observed.add_state(state)
    assert [fx.open(s) for s in stages] == [expected[("shop", s)] for s in stages]
    # Net result counts never go below zero, and entries minus exits is what is open (unless a
    # merge took a folded past, whose entries stay counted, to an owner not modelled here).
    for s in stages:
        assert min(fx.net(k, s) for k in ("stage", "dropoff", "recovery", "advance")) >= 0
    assert fx.moved_past or fx.net("stage", "browse") - fx.net("advance", "browse") - fx.net(
        "dropoff", "browse"
    ) + fx.net("recovery", "browse") == fx.open("browse")


def test_a_recount_after_folding_counts_the_instance_open_across_the_cut() -> None:
    fx = Fixture(lateness_ms=MIN)  # the cut at minute 4 is minute 2
    fx.send("a", 4, (0, "Product Viewed"))
    state = fx.states["a"]
    assert state.cursors is not None and not state.history and not state.emitted  # all folded
    assert fx.open("browse") == 1
    fx.observed.reset()
    fx.observed.add_state(state)
    assert (fx.open("browse"), fx.open("cart")) == (1, 0)
    fx.send("a", 5, (5, "Product Added"))  # browse's entry time comes from the checkpoint
    assert (fx.open("browse"), fx.open("cart")) == (0, 1)
    labels = {"journey": "shop", "stage": "browse"}
    assert fx.value("tracker_journey_time_at_stage_seconds_count", **labels) == 1
    assert fx.value("tracker_journey_time_at_stage_seconds_sum", **labels) == 5 * 60


def test_the_engines_tallies_are_drained_into_the_metrics(fx: Fixture) -> None:
    fx.engine.counts.update({"hot_keys": 2, "left_out_hot_key": 7, "left_out_behind_fold": 1})
    fx.observed.drain(fx.engine.counts)
    assert not +fx.engine.counts
    assert fx.value("tracker_journey_hot_keys_total") == 2
    assert fx.value("tracker_journey_left_out_total", reason="hot_key") == 7
    assert fx.value("tracker_journey_left_out_total", reason="behind_fold") == 1
