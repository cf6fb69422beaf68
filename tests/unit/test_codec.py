"""Customer states survive the changelog table round trip, compactly."""

from __future__ import annotations

from dataclasses import fields

import orjson
import pytest

from tests.unit.test_journey_rules import MIN, SHOP, tp
from tracker.core.journeys.codec import (
    dump_state,
    load_emitted,
    load_state,
    stored_deadline,
    tp_to_list,
    tps_from_lists,
)
from tracker.core.journeys.engine import CustomerState, JourneyEngine, Touchpoint
from tracker.warehouse.sink import result_row


def _state(engine: JourneyEngine) -> CustomerState:
    state = CustomerState("c1")
    engine.add(state, [tp(0, "Product Viewed"), tp(1, "Product Added"),
                       tp(2, "Page Loaded", load_ms=5000)])  # fmt: skip
    engine.settle(state, 30 * MIN)
    return state


def test_round_trip_keeps_history_results_and_version() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=60 * MIN)
    state = _state(engine)
    raw = orjson.loads(orjson.dumps(dump_state(state, engine.fingerprint)))  # as JSON stores it
    back = load_state(raw, engine.fingerprint)
    assert (back.customer, back.version, back.emitted) == ("c1", 1, state.emitted)
    assert [(t.t, t.message_id, t.event, t.channel, t.bits) for t in back.history] == [
        (t.t, t.message_id, t.event, t.channel, t.bits) for t in state.history
    ]
    assert engine.results(back, 30 * MIN) == engine.results(state, 30 * MIN)
    assert len(orjson.dumps(raw["h"][0])) < 60  # no properties, type or path kept


def test_under_changed_definitions_old_touchpoints_match_nothing() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=60 * MIN)
    back = load_state(dump_state(_state(engine), engine.fingerprint), "other-definitions")
    assert engine.results(back, 30 * MIN) == {}


def test_the_stored_deadline_is_the_timer_deadline_under_the_same_definitions() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=60 * MIN)
    state = CustomerState("c1")
    engine.add(state, [tp(0, "Product Viewed"), tp(1, "Product Added")])
    engine.settle(state, 2 * MIN)  # the cart deadline (minute 6) is pending
    raw = orjson.loads(orjson.dumps(dump_state(state, engine.fingerprint)))
    assert stored_deadline(raw, engine.fingerprint) == (True, engine.next_deadline(state))
    assert stored_deadline(raw, engine.fingerprint) == (True, 6 * MIN)
    assert load_emitted(raw) == state.emitted
    assert stored_deadline(raw, "other-definitions") == (False, None)
    del raw["d"]  # a state stored before deadlines were
    assert stored_deadline(raw, engine.fingerprint) == (False, None)


def test_only_touchpoints_with_known_rule_matches_are_stored() -> None:
    with pytest.raises(ValueError):
        tp_to_list(tp(0, "Product Viewed"))


def test_a_withdrawn_result_is_a_deleted_row_of_the_same_key() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=60 * MIN)
    (result, _), *_ = _state(engine).emitted.items()
    live, gone = result_row(1, result, 3), result_row(-1, result, 4)
    assert live[:7] == gone[:7] and (live[-2:], gone[-2:]) == ([3, 0], [4, 1])


def test_a_touchpoint_built_from_its_stored_form_has_every_field_of_a_constructed_one() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=60 * MIN)
    stored = [1000, "m1", "Product Viewed", "web", engine.signature(tp(1, "Product Viewed"))]
    (built,) = tps_from_lists([stored])
    made = Touchpoint(1000, "m1", "", "Product Viewed", "web", "", {}, stored[4], stored)
    for f in fields(Touchpoint):  # a field added to Touchpoint must be set here too
        assert getattr(built, f.name) == getattr(made, f.name), f.name
    assert tp_to_list(built) is stored
