"""Bounded customer state: folding keeps results exact, hot keys stay within their bounds."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import replace
from unittest.mock import patch

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_journey_properties import LATENESS, deliveries
from tests.unit.test_journey_rules import MIN, SHOP, tp
from tracker.core.journeys import codec
from tracker.core.journeys.codec import (
    dump_bounded,
    dump_past,
    dump_state,
    load_past,
    load_state,
)
from tracker.core.journeys.engine import (
    NEVER,
    Change,
    CustomerState,
    JourneyEngine,
    Touchpoint,
    evaluate,
)
from tracker.core.journeys.results import Result

# The worker folds in steps of L; these tests fold in quarters of it, so the short histories
# here cross several cuts. The exactness argument holds for any step.
STEP = 15 * MIN


def settled(history: list[Touchpoint], now: int, customer: str = "c1") -> Counter[Result]:
    return Counter(evaluate(SHOP, customer, sorted(history, key=lambda x: x.order), now))


def tally(total: Counter[Result], changes: list[Change]) -> None:
    for sign, r in changes:
        total[r] += sign
        assert total[r] >= 0, "a retraction of something never emitted"


@settings(max_examples=300, deadline=None)
@given(deliveries(40, 1800), st.integers(1, 3))  # 0-900 min: far longer than window + L
def test_folded_state_gives_the_complete_history_results(
    delivery: tuple[list[Touchpoint], list[tuple[int, Touchpoint]]], chunk: int
) -> None:
    history, arrivals = delivery
    engine = JourneyEngine([SHOP], lateness_ms=LATENESS, fold_step_ms=STEP)
    state = CustomerState("c1")
    total: Counter[Result] = Counter()
    end = max(t for t, _ in arrivals) + 3 * 60 * MIN
    expected = settled(history, end)
    for i, (now, tp_) in enumerate(arrivals, start=1):
        assert not engine.is_late(tp_, now)
        engine.add(state, [tp_])
        if i % chunk and i != len(arrivals):
            continue
        tally(total, engine.settle(state, now))
        # The live part: only what lies at or after a cut that kept up with the clock.
        assert state.cutoff >= engine.cut(now)
        assert all(t.t >= state.cutoff for t in state.history)
        assert all(t >= state.cutoff - LATENESS for t in state.recent.values())
        assert sum(state.emitted.values()) <= 4 * len(state.history) + 1  # live results only
        # The hot-key bound's estimate stays that of the live history across folds.
        assert state.weight == sum(engine._weight(t) for t in state.history)
        # What left the state is final: the complete history gives every one of those results.
        assert not state.emitted - total
        assert not (total - state.emitted) - expected
    tally(total, engine.settle(state, end))
    assert +total == expected
    assert not engine.counts["left_out_behind_fold"] and not state.hot


@settings(max_examples=200, deadline=None)
@given(deliveries(40, 1800), st.integers(1, 3), st.sampled_from([1, 8, 10**9]))
def test_a_state_stored_and_loaded_between_batches_gives_the_complete_history_results(
    delivery: tuple[list[Touchpoint], list[tuple[int, Touchpoint]]], chunk: int, tail_from: int
) -> None:
    """As the worker keeps a state it does not hold in memory: stored after every settle and
    loaded again, with where its scan stood (from 1 or 8 live touchpoints on) or without."""
    history, arrivals = delivery
    engine = JourneyEngine([SHOP], lateness_ms=LATENESS, fold_step_ms=STEP)
    state = CustomerState("c1")
    total: Counter[Result] = Counter()
    end = max(t for t, _ in arrivals) + 3 * 60 * MIN
    with patch.object(codec, "TAIL_STORED_FROM", tail_from):
        for i, (now, tp_) in enumerate(arrivals, start=1):
            engine.add(state, [tp_])
            if i % chunk and i != len(arrivals):
                continue
            tally(total, engine.settle(state, now))
            raw = orjson.dumps(dump_state(state, engine.fingerprint))
            state = load_state(orjson.loads(raw), engine.fingerprint)
    tally(total, engine.settle(state, end))
    assert +total == settled(history, end)


def test_a_fold_drops_only_results_no_late_data_can_change() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=60 * MIN, fold_step_ms=STEP)
    state = CustomerState("c1")
    bought = [tp(0, "Product Viewed"), tp(1, "Product Added"), tp(2, "Checkout Started"),
              tp(3, "Order Completed")]  # fmt: skip
    across, later = tp(55, "Product Viewed"), tp(130, "Product Viewed")
    engine.add(state, [*bought, across, later])
    changes = engine.settle(state, 140 * MIN)  # the cut: minute 60
    assert state.cutoff == 60 * MIN
    assert [t.message_id for t in state.history] == [later.message_id]
    everything = settled([*bought, across, later], 140 * MIN)
    assert Counter(r for _, r in changes) == everything
    # Left: the drop-off of the instance open across the cut (due after it) and the new one.
    kept = {(r.instance, type(r).__name__) for r in state.emitted}
    assert kept == {
        (f"{across.t}:{across.message_id}", "DropOff"),
        (f"{later.t}:{later.message_id}", "StageEntered"),
    }
    cursor = state.cursors[0] if state.cursors else None
    assert cursor is not None and cursor.inst is not None
    assert (cursor.inst.level, cursor.inst.dropped_at) == (1, None)  # open at the cut
    # Folded ids within L before the cut (here all of them) are kept against copies.
    assert state.recent == {t.message_id: t.t for t in [*bought, across]}
    # Settling again changes nothing, and the next touchpoint carries on from the checkpoint.
    assert engine.settle(state, 140 * MIN) == []
    added = tp(131, "Product Added")
    engine.add(state, [added])
    total = everything.copy()
    tally(total, engine.settle(state, 141 * MIN))
    assert +total == settled([*bought, across, later, added], 141 * MIN)


def _folded(engine: JourneyEngine) -> tuple[CustomerState, Counter[Result], Touchpoint]:
    state = CustomerState("c1")
    pv = tp(50, "Product Viewed", mid="dup")
    engine.add(state, [pv])
    total: Counter[Result] = Counter()
    tally(total, engine.settle(state, 140 * MIN))  # cut at minute 60: pv is folded
    assert not state.history and "dup" in state.recent
    return state, total, pv


def test_a_copy_of_a_folded_touchpoint_counts_once() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=60 * MIN, fold_step_ms=STEP)
    state, total, pv = _folded(engine)
    copy = replace(pv, t=135 * MIN)  # a retry whose event time moved past the cut
    assert engine.add(state, [copy]) == 0
    assert engine.settle(state, 141 * MIN) == []
    assert +total == settled([pv], 141 * MIN)


def test_a_touchpoint_behind_the_fold_is_counted_and_left_out() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=60 * MIN, fold_step_ms=STEP)
    state, _, _ = _folded(engine)
    behind = tp(52, "Product Added")  # forwarded by a merge: it never met the lateness check
    assert engine.add(state, [behind]) == 0
    assert engine.counts["left_out_behind_fold"] == 1
    assert engine.settle(state, 141 * MIN) == []


def _bot(n: int, start: int = 0) -> list[Touchpoint]:
    """A bot: stage-matching touchpoints with uuid messageIds, 10 a second."""
    events = ["Product Viewed", "Product Added", "Checkout Started", "Page Loaded"]
    return [
        Touchpoint(start + i * 100, str(uuid.uuid4()), "track", events[i % 4], "web", "",
                   {"load_ms": 5000})
        for i in range(n)
    ]  # fmt: skip


def test_a_hot_key_stays_within_its_bounds() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=60 * MIN, fold_step_ms=STEP)
    state = CustomerState("bot")
    total: Counter[Result] = Counter()
    bot = _bot(50_000)
    biggest = 0
    for i in range(0, len(bot), 1000):
        batch = bot[i : i + 1000]
        engine.add(state, batch)
        tally(total, engine.settle(state, batch[-1].t))
        assert len(state.history) <= engine.max_live_touchpoints
        assert state.weight == sum(engine._weight(t) for t in state.history)
        raw, changes = dump_bounded(engine, state, batch[-1].t)
        assert changes == []  # the hot fold alone kept it small: the guard had nothing to do
        biggest = max(biggest, len(raw))
    assert biggest <= engine.max_state_bytes
    assert state.hot and engine.counts["hot_keys"] == 1
    assert engine.counts["folded"] > 40_000
    # Behind its cut: left out as a hot key's, and counted.
    assert engine.add(state, [tp(0, "Product Viewed")]) == 0
    assert engine.counts["left_out_hot_key"] == 1
    # Every result emitted is a result of the complete history: only the window differs.
    assert not +total - settled(bot, bot[-1].t, "bot")
    # Signals kept per stage are capped.
    assert all(len(r.pain) <= 64 for r in total if hasattr(r, "pain"))


def test_the_size_guard_folds_a_state_that_would_not_fit() -> None:
    unbounded = JourneyEngine([SHOP], lateness_ms=60 * MIN, fold_step_ms=STEP,
                              max_live_touchpoints=10**9, max_state_bytes=10**9)  # fmt: skip
    state = CustomerState("bot")
    bot = _bot(20_000)
    now = bot[-1].t
    unbounded.add(state, bot)
    total: Counter[Result] = Counter()
    tally(total, unbounded.settle(state, now))
    assert len(orjson.dumps(dump_state(state, unbounded.fingerprint))) > 2 * 512 * 1024
    guarded = JourneyEngine([SHOP], lateness_ms=60 * MIN, fold_step_ms=STEP)
    raw, changes = dump_bounded(guarded, state, now)
    assert len(raw) <= guarded.max_state_bytes == 512 * 1024
    assert guarded.counts["state_guard"] == 1 and state.hot and not state.history
    tally(total, changes)
    assert +total == settled(bot, now, "bot")  # folding everything changed no result
    back = load_state(orjson.loads(raw), guarded.fingerprint)
    assert back.cursors == state.cursors and back.cutoff == state.cutoff and back.hot


def test_a_state_stored_before_folding_existed_loads_as_never_folded() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=60 * MIN, fold_step_ms=STEP)
    state = CustomerState("c1")
    engine.add(state, [tp(0, "Product Viewed"), tp(1, "Product Added")])
    engine.settle(state, 2 * MIN)
    raw = orjson.loads(orjson.dumps(dump_state(state, engine.fingerprint)))
    assert not {"q", "r", "x"} & raw.keys()  # nothing folded yet
    del raw["k"]  # as an older version stored it
    back = load_state(raw, engine.fingerprint)
    assert (back.cutoff, back.cursors, back.recent, back.hot) == (-NEVER, None, {}, False)
    assert engine.settle(back, 2 * MIN) == []


def test_a_folded_state_round_trips_and_a_definition_change_resets_its_cursors() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=60 * MIN, fold_step_ms=STEP)
    state, _, _ = _folded(engine)
    raw = orjson.loads(orjson.dumps(dump_state(state, engine.fingerprint)))
    back = load_state(raw, engine.fingerprint)
    assert (back.cutoff, back.cursors, back.recent) == (state.cutoff, state.cursors, state.recent)
    assert engine.results(back, 141 * MIN) == engine.results(state, 141 * MIN)
    other = load_state(raw, "other-definitions")
    assert other.cursors is None and other.cutoff == state.cutoff


def _customer(engine: JourneyEngine, key: str, tps: list[Touchpoint], now: int) -> CustomerState:
    state = CustomerState(key)
    engine.add(state, tps)
    engine.settle(state, now)
    return state


def _anonymous(results: Counter[Result]) -> Counter[Result]:
    return Counter({r._replace(customer="-"): n for r, n in results.items()})


def test_merge_adopts_the_only_folded_past() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=60 * MIN, fold_step_ms=STEP)
    viewed, added = tp(55, "Product Viewed"), tp(62, "Product Added")
    member_total: Counter[Result] = Counter()
    member = CustomerState("member")
    engine.add(member, [viewed])
    tally(member_total, engine.settle(member, 140 * MIN))  # folded at minute 60, open there
    owner_total: Counter[Result] = Counter()
    owner = CustomerState("owner")
    engine.add(owner, [added])
    tally(owner_total, engine.settle(owner, 140 * MIN))
    assert member.cursors is not None and owner.cursors is None
    # The merge, as the worker carries it: retract, move the past (as plain data), add the rest.
    tally(member_total, engine.retract_all(member))
    past = load_past(orjson.loads(orjson.dumps(dump_past(member))))
    assert engine.adopt_past(owner, past)
    engine.add(owner, member.history)
    tally(owner_total, engine.settle(owner, 141 * MIN))
    # Exact, except that the result already final keeps the key it had then.
    assert _anonymous(+member_total + +owner_total) == _anonymous(
        settled([viewed, added], 141 * MIN)
    )
    assert {r.customer for r in +member_total} == {"member"}


def test_merge_of_two_folded_pasts_is_counted() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=60 * MIN, fold_step_ms=STEP)
    member = _customer(engine, "member", [tp(55, "Product Viewed")], 140 * MIN)
    owner = _customer(engine, "owner", [tp(50, "Product Viewed")], 140 * MIN)
    before = owner.cursors
    assert not engine.adopt_past(owner, engine.past(member))
    assert owner.cursors is before and engine.counts["pasts_dropped"] == 1
    assert engine.adopt_past(owner, None)  # a member with no folded past: nothing to do
