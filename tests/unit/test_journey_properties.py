"""Rule 6 as properties: arrival order and duplication never change the settled results."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_journey_rules import MIN, SHOP
from tracker.core.journeys.engine import CustomerState, JourneyEngine, Touchpoint, evaluate
from tracker.core.journeys.results import DropOff, Result

EVENTS = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed",
          "Payment Failed", "Page Loaded", "Chat Rated", "FAQ Viewed"]  # fmt: skip
LATENESS = 60 * MIN


@st.composite
def histories(draw: st.DrawFn, most: int = 14, half_minutes: int = 150) -> list[Touchpoint]:
    n = draw(st.integers(1, most))
    out = []
    for i in range(n):
        out.append(
            Touchpoint(
                t=draw(st.integers(0, half_minutes)) * MIN // 2,  # half-minute grid: ties happen
                message_id=f"m{i:02d}",
                type="track",
                event=draw(st.sampled_from(EVENTS)),
                channel=draw(st.sampled_from(["web", "app", "store"])),
                path="",
                properties={"load_ms": draw(st.sampled_from([100, 5000])), "score": 5},
            )
        )
    return out


@st.composite
def deliveries(
    draw: st.DrawFn, most: int = 14, half_minutes: int = 150
) -> tuple[list[Touchpoint], list[tuple[int, Touchpoint]]]:
    """A history, and an arrival schedule: each touchpoint (some twice) arrives at a processing
    time between its event time and its event time + L, in any order."""
    history = draw(histories(most, half_minutes))
    arrivals = []
    for tp in history:
        for _ in range(draw(st.integers(1, 2))):
            arrivals.append((tp.t + draw(st.integers(0, LATENESS)), tp))
    arrivals.sort(key=lambda a: a[0])
    return history, arrivals


def settled(history: list[Touchpoint], now: int) -> Counter[Result]:
    ordered = sorted(history, key=lambda x: x.order)
    return Counter(evaluate(SHOP, "c1", ordered, now))


@settings(max_examples=300, deadline=None)
@given(deliveries(), st.integers(1, 4))
def test_emitted_changes_sum_to_the_complete_history_results(
    delivery: tuple[list[Touchpoint], list[tuple[int, Touchpoint]]], chunk: int
) -> None:
    history, arrivals = delivery
    engine = JourneyEngine([SHOP], lateness_ms=LATENESS)
    state = CustomerState("c1")
    total: Counter[Result] = Counter()
    # Each touchpoint is added when it arrives; results are settled every `chunk` arrivals, at
    # the processing time of the last one (as a worker settles once per batch).
    for i, (now, tp) in enumerate(arrivals, start=1):
        assert not engine.is_late(tp, now)
        engine.add(state, [tp])
        if i % chunk and i != len(arrivals):
            continue
        for sign, result in engine.settle(state, now):
            total[result] += sign
            assert total[result] >= 0, "a retraction of something never emitted"
    end = max(t for t, _ in arrivals) + 3 * 60 * MIN
    for sign, result in engine.settle(state, end):
        total[result] += sign
    expected = settled(history, end)
    assert +total == expected
    assert all(c == 1 for c in expected.values())


@settings(max_examples=200, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_results_do_not_depend_on_insertion_order(history: list[Touchpoint], rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    shuffled = history[:] + history[: len(history) // 2]
    rnd.shuffle(shuffled)
    engine = JourneyEngine([SHOP], lateness_ms=LATENESS)
    state = CustomerState("c1")
    engine.add(state, shuffled)
    assert engine.results(state, 10**9) == settled(history, 10**9)


@settings(max_examples=300, deadline=None)
@given(histories(), st.integers(0, 160))
def test_the_deadline_a_settle_reports_is_when_results_next_change(
    history: list[Touchpoint], now_half_minutes: int
) -> None:
    engine = JourneyEngine([SHOP], lateness_ms=LATENESS)
    now = now_half_minutes * MIN // 2
    state = CustomerState("c1")
    engine.add(state, history)
    engine.settle(state, now)
    due = state.deadline
    # Nothing changes before the reported deadline (time passes strictly beyond a deadline)...
    later = due if due is not None else now + 10_000 * MIN
    assert settled(history, later) == state.emitted
    # ...and something does just after it.
    if due is not None:
        assert due >= now
        assert settled(history, due + 1) != state.emitted
    # The timer path that rebuilds deadlines from stored states agrees.
    assert engine.next_deadline(state) == due


@settings(max_examples=300, deadline=None)
@given(histories(), st.integers(0, 160), st.integers(1, 400))
def test_a_state_found_late_is_due_at_once_and_settles_as_if_on_time(
    history: list[Touchpoint], then_half_minutes: int, gap_half_minutes: int
) -> None:
    """Settled at ``then``, then unwatched until ``later`` (a crash, a rebalance): the stored
    state names the first deadline it missed, and settling it late gives the results of the
    complete history as of ``later``, every drop-off at its own deadline."""
    engine = JourneyEngine([SHOP], lateness_ms=LATENESS)
    then = then_half_minutes * MIN // 2
    later = then + gap_half_minutes * MIN // 2
    state = CustomerState("c1")
    engine.add(state, history)
    emitted: Counter[Result] = Counter()
    for sign, r in engine.settle(state, then):
        emitted[r] += sign
    missed = [r.at for r in settled(history, later) - emitted if isinstance(r, DropOff)]
    due = engine.next_deadline(state)
    if missed:
        assert due == min(missed) and due < later
    for sign, r in engine.settle(state, later):  # may fold: emitted then holds the live part
        emitted[r] += sign
    assert +emitted == settled(history, later)
