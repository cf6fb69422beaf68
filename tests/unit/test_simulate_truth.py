"""The simulator's ground truth, built from its own decisions, equals what the reference stitcher
computes from the touchpoints it sends, delivered as they would be (out of order, resent)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tracker.core.identity import MAX_USERS_PER_DEVICE
from tracker.core.journeys.codec import dump_state, load_state
from tracker.core.journeys.definition import load
from tracker.core.journeys.engine import JourneyEngine
from tracker.core.journeys.results import Conversion, DropOff, Recovery, Result, StageEntered
from tracker.core.journeys.stitcher import Stitcher
from tracker.core.touchpoint import SegmentMessage, to_record
from tracker.settings import REPO_ROOT
from tracker.simulate.generate import Delivery, Planner, wire_message
from tracker.simulate.truth import Truth

START_MS = 1_790_000_000_000
DEMO = REPO_ROOT / "deploy" / "journeys.demo.yaml"
EXAMPLE = REPO_ROOT / "deploy" / "journeys.example.yaml"


def _plan(path: Any, scenario: str, seed: int, rate: float, duration: float) -> tuple[Any, ...]:
    journeys = load(path)
    planner = Planner(journeys, scenario, seed)
    truth = Truth(journeys)
    deliveries: list[Delivery] = []
    for customer in planner.customers(rate, duration):
        truth.add(customer)
        deliveries += customer.deliveries
    deliveries.sort(key=lambda d: d.at)
    return journeys, truth, deliveries


def _engine_results(
    journeys: Any, deliveries: list[Delivery], *, stored: bool = False
) -> Counter[Result]:
    """Feed the stitcher what the collector would make of each delivery, at its arrival time,
    with a clock tick every 250 ms as the worker has. With ``stored``, every customer's state is
    stored and loaded again after each step, as the worker keeps it in its changelog table."""
    engine = JourneyEngine(journeys, lateness_ms=3_600_000)
    stitcher = Stitcher(engine)
    total: Counter[Result] = Counter()

    def apply(changes: list[tuple[int, Result]]) -> None:
        for sign, result in changes:
            total[result] += sign
        if stored:
            for key, state in stitcher.customers.items():
                raw = dump_state(state, engine.fingerprint)
                stitcher.customers[key] = load_state(raw, engine.fingerprint)

    now = START_MS
    for delivery in deliveries:
        sent = START_MS + round(delivery.at * 1000)
        while now + 250 < sent:
            now += 250
            apply(stitcher.tick(now))
        records = [
            to_record(
                SegmentMessage.model_validate(wire_message(t, START_MS, sent)),
                source="sim",
                received_at_ms=sent,
            )
            for t in delivery.touches
        ]
        apply(stitcher.ingest(records, now=sent).changes)
    for _ in range(400):  # the clock runs on past the last deadline, tick by tick
        now += 250
        apply(stitcher.tick(now))
    apply(stitcher.tick(START_MS + 400 * 86_400_000))  # long after every window
    assert all(n in (0, 1) for n in total.values()), "a result counted twice"
    return +total


def _summary(results: Counter[Result]) -> dict[str, Any]:
    entered: Counter[tuple[str, str]] = Counter()
    drops: list[tuple[str, str, str, tuple[str, ...], tuple[str, ...]]] = []
    recoveries: Counter[tuple[str, str]] = Counter()
    conversions: list[tuple[str, str]] = []
    for r in results:
        if isinstance(r, StageEntered):
            entered[(r.journey, r.stage)] += 1
        elif isinstance(r, DropOff):
            drops.append((r.journey, r.customer, r.stage, r.pain, r.love))
        elif isinstance(r, Recovery):
            recoveries[(r.journey, r.stage)] += 1
        elif isinstance(r, Conversion):
            conversions.append((r.journey, r.customer))
    return {
        "entered": +entered,
        "dropoffs": sorted(drops),
        "recoveries": +recoveries,
        "conversions": sorted(conversions),
    }


@pytest.mark.parametrize(
    ("path", "scenario", "seed"),
    [
        (DEMO, "mix", 1),
        (DEMO, "mix", 2),
        (DEMO, "ecommerce", 3),
        (DEMO, "banking", 4),
        (DEMO, "telecom", 5),
        (DEMO, "hospitality", 6),
        (EXAMPLE, "mix", 7),
    ],
)
def test_truth_equals_reference_stitcher(path: Any, scenario: str, seed: int) -> None:
    journeys, truth, deliveries = _plan(path, scenario, seed, rate=40, duration=20)
    engine = _summary(_engine_results(journeys, deliveries))
    expected = {
        "entered": +truth.entered,
        "dropoffs": sorted(truth.dropoff_list),
        "recoveries": +truth.recoveries,
        "conversions": sorted(truth.conversion_list),
    }
    assert engine == expected
    # The scenario exercises what it claims to: drop-offs with pain, recoveries, conversions.
    assert truth.dropoff_list and truth.conversion_list
    assert any(p for _, _, _, p, _ in truth.dropoff_list)
    if path == DEMO:
        assert truth.recoveries


def test_truth_equals_stitcher_whose_states_are_stored_between_steps() -> None:
    """Stored states keep only each touchpoint's rule matches; deadlines must come from those."""
    journeys, truth, deliveries = _plan(DEMO, "mix", 8, rate=40, duration=15)
    engine = _summary(_engine_results(journeys, deliveries, stored=True))
    assert engine["dropoffs"] == sorted(truth.dropoff_list)
    assert engine["conversions"] == sorted(truth.conversion_list)


def test_same_seed_same_run_other_seed_other_run() -> None:
    def ids(seed: int) -> list[tuple[float, str, str]]:
        _, _, deliveries = _plan(DEMO, "mix", seed, rate=30, duration=5)
        return [(d.at, t.message_id, str(t.fields)) for d in deliveries for t in d.touches]

    assert ids(11) == ids(11)
    assert ids(11) != ids(12)


def test_run_has_duplicates_multi_device_logins_and_out_of_order_delivery() -> None:
    _, truth, deliveries = _plan(DEMO, "mix", 21, rate=60, duration=30)
    assert truth.messages > truth.unique_messages  # some batches were sent twice
    assert any(len(ids) >= 3 for ids in truth.customers.values())  # two devices and a login
    # Some customer's touchpoints arrive in another order than they happened.
    arrival: dict[str, list[float]] = {}
    for d in deliveries:
        for t in d.touches:
            arrival.setdefault(t.message_id.rsplit("-m", 1)[0], []).append(t.t)
    assert any(times != sorted(times) for times in arrival.values())


def test_run_has_shared_laptops_and_a_kiosk_past_the_bound() -> None:
    _, truth, deliveries = _plan(DEMO, "mix", 21, rate=60, duration=30)
    users: dict[str, set[str]] = {}
    for d in deliveries:
        for t in d.touches:
            if t.fields["type"] == "identify":
                users.setdefault(t.fields["anonymousId"], set()).add(t.fields["userId"])
    kiosk = [anon for anon in users if anon.endswith("-kiosk")]
    assert len(kiosk) == 1 and len(users[kiosk[0]]) > MAX_USERS_PER_DEVICE
    laptops = [anon for anon, who in users.items() if len(who) > 1 and anon not in kiosk]
    assert laptops
    # Every user of a shared device is a customer of its own in the truth.
    for anon in [*laptops, *kiosk]:
        assert all(user in truth.customers for user in users[anon])
