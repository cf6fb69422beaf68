"""Rules 2-6 of the journey engine, each with hand-computed expectations."""

from __future__ import annotations

from collections import Counter
from itertools import count
from typing import Any

import pytest

from tracker.core.journeys.definition import loads
from tracker.core.journeys.engine import CustomerState, JourneyEngine, Touchpoint, evaluate
from tracker.core.journeys.results import Conversion, DropOff, Recovery, StageEntered

MIN = 60_000
SHOP = loads(
    """
journeys:
  - name: shop
    window: 1h
    stages:
      - {name: browse, match: {event: Product Viewed}, timeout: 10m}
      - {name: cart, match: {event: Product Added}, timeout: 5m}
      - {name: checkout, match: {event: Checkout Started}}
      - name: purchase
        match: {any: [{event: Order Completed}, {event: Purchase, channel: store}]}
    pain:
      - {name: payment_failed, match: {event: Payment Failed}}
      - {name: slow_page, match: {event: Page Loaded, where: {load_ms: {gt: 3000}}}}
    love:
      - {name: helpful_chat, match: {event: Chat Rated, where: {score: {gte: 4}}}}
"""
)[0]
_ids = count()


def tp(
    minutes: float, event: str, *, mid: str | None = None, channel: str = "web", **props: Any
) -> Touchpoint:
    return Touchpoint(
        t=int(minutes * MIN), message_id=mid or f"m{next(_ids):04d}", type="track", event=event,
        channel=channel, path="", properties=props,
    )  # fmt: skip


def run(history: list[Touchpoint], now_minutes: float) -> list[object]:
    history = sorted(history, key=lambda x: x.order)
    return list(evaluate(SHOP, "c1", history, int(now_minutes * MIN)))


def entered(stage: str, level: int, t: Touchpoint, instance: Touchpoint) -> StageEntered:
    return StageEntered("shop", "c1", f"{instance.t}:{instance.message_id}", stage, level, t.t,
                        t.message_id, t.channel)  # fmt: skip


def test_stage_one_opens_an_instance() -> None:
    pv = tp(0, "Product Viewed")
    assert run([tp(-1, "Home Viewed"), pv], 1) == [entered("browse", 1, pv, pv)]


def test_no_skipping_stages() -> None:
    pv, cs = tp(0, "Product Viewed"), tp(1, "Checkout Started")
    assert run([pv, cs], 2) == [entered("browse", 1, pv, pv)]


def test_progress_to_conversion() -> None:
    pv, pa, cs = tp(0, "Product Viewed"), tp(1, "Product Added"), tp(2, "Checkout Started")
    buy = tp(3, "Purchase", channel="store")
    assert run([pv, pa, cs, buy], 4) == [
        entered("browse", 1, pv, pv),
        entered("cart", 2, pa, pv),
        entered("checkout", 3, cs, pv),
        entered("purchase", 4, buy, pv),
        Conversion("shop", "c1", f"0:{pv.message_id}", 0, 3 * MIN, "store"),
    ]


def test_purchase_in_the_wrong_channel_does_not_match() -> None:
    pv, pa, cs = tp(0, "Product Viewed"), tp(1, "Product Added"), tp(2, "Checkout Started")
    assert len(run([pv, pa, cs, tp(3, "Purchase", channel="web")], 4)) == 3


def test_drop_off_when_the_stage_timeout_passes() -> None:
    pv, other = tp(0, "Product Viewed"), tp(4, "FAQ Viewed", channel="app")
    assert run([pv, other], 10) == [entered("browse", 1, pv, pv)]  # at the deadline: not yet
    assert run([pv, other], 10.001)[1] == DropOff(
        "shop", "c1", f"0:{pv.message_id}", "browse", 1, 0, 10 * MIN, False,
        "FAQ Viewed", "app", (), (),
    )  # fmt: skip


def test_moving_on_exactly_at_the_deadline_is_in_time() -> None:
    pv, pa = tp(0, "Product Viewed"), tp(10, "Product Added")
    assert [type(r).__name__ for r in run([pv, pa], 12)] == ["StageEntered", "StageEntered"]


def test_drop_off_carries_pain_and_love_seen_at_that_stage() -> None:
    history = [
        tp(0, "Payment Failed"),  # before the stage: not counted
        pv := tp(0.5, "Product Viewed"),
        tp(1, "Product Added"),
        tp(2, "Payment Failed"),
        tp(3, "Page Loaded", load_ms=5000),
        tp(3.5, "Page Loaded", load_ms=900),
        tp(4, "Chat Rated", score=5),
        tp(7, "Payment Failed"),  # after the cart deadline (6 min): not counted
    ]
    drop = run(history, 60)[-1]
    assert drop == DropOff(
        "shop", "c1", f"{pv.t}:{pv.message_id}", "cart", 2, 1 * MIN, 6 * MIN, False,
        "Chat Rated", "web", ("payment_failed", "slow_page"), ("helpful_chat",),
    )  # fmt: skip
    assert drop.time_at_stage_ms == 5 * MIN


def test_recovery_after_a_drop_off() -> None:
    pv, pa = tp(0, "Product Viewed"), tp(20, "Product Added")
    inst = f"0:{pv.message_id}"
    assert run([pv, pa], 21) == [
        entered("browse", 1, pv, pv),
        DropOff(
            "shop", "c1", inst, "browse", 1, 0, 10 * MIN, False, "Product Viewed", "web", (), ()
        ),
        Recovery("shop", "c1", inst, "browse", 1, 10 * MIN, 20 * MIN),
        entered("cart", 2, pa, pv),
    ]


def test_expiry_is_a_drop_off_and_closes_the_instance() -> None:
    pv, pa, cs = tp(0, "Product Viewed"), tp(1, "Product Added"), tp(2, "Checkout Started")
    late_buy = tp(70, "Order Completed")
    results = run([pv, pa, cs, late_buy], 80)
    assert results[-1] == DropOff(
        "shop", "c1", f"0:{pv.message_id}", "checkout", 3, 2 * MIN, 60 * MIN, True,
        "Checkout Started", "web", (), (),
    )  # fmt: skip
    assert not any(isinstance(r, Conversion | Recovery) for r in results)


def test_next_stage_one_after_expiry_opens_a_new_instance() -> None:
    first, second = tp(0, "Product Viewed"), tp(70, "Product Viewed")
    results = run([first, second], 71)
    assert [r for r in results if isinstance(r, StageEntered)] == [
        entered("browse", 1, first, first),
        entered("browse", 1, second, second),
    ]


def test_stage_one_again_while_open_changes_nothing() -> None:
    first = tp(0, "Product Viewed")
    results = run([first, tp(5, "Product Viewed")], 10.5)
    assert len(results) == 2
    assert isinstance(results[1], DropOff) and results[1].at == 10 * MIN


def test_conversion_closes_and_the_next_stage_one_opens_anew() -> None:
    h = [tp(0, "Product Viewed"), tp(1, "Product Added"), tp(2, "Checkout Started"),
         tp(3, "Order Completed"), again := tp(4, "Product Viewed")]  # fmt: skip
    assert run(h, 5)[-1] == entered("browse", 1, again, again)


def test_ties_in_event_time_are_ordered_by_message_id() -> None:
    pa, pv = tp(0, "Product Added", mid="a"), tp(0, "Product Viewed", mid="b")
    # "a" sorts first: the add comes before the view, so it cannot move the instance on.
    assert run([pv, pa], 1) == [entered("browse", 1, pv, pv)]


# -- the engine: duplicates, lateness, corrections -------------------------------------------


def engine() -> JourneyEngine:
    return JourneyEngine([SHOP], lateness_ms=60 * MIN)


def test_duplicates_count_once() -> None:
    state, e = CustomerState("c1"), engine()
    pv = tp(0, "Product Viewed", mid="x")
    assert e.add(state, [pv, tp(0, "Product Viewed", mid="x")]) == 1
    assert e.add(state, [pv]) == 0
    assert len(state.history) == 1


def test_of_copies_with_different_event_times_the_last_to_arrive_is_kept() -> None:
    """A retried request carries its messages again with a new sentAt, so the copy's corrected
    event time differs; the copy that arrives last is kept, as in the touchpoints table."""
    state, e = CustomerState("c1"), engine()
    first, retried = tp(0, "Product Viewed", mid="x"), tp(0.5, "Product Viewed", mid="x")
    e.add(state, [first])
    e.settle(state, 1 * MIN)
    assert e.add(state, [retried]) == 1
    assert [(h.message_id, h.t) for h in state.history] == [("x", retried.t)]
    changes = e.settle(state, 1 * MIN)
    assert changes == [(-1, entered("browse", 1, first, first)),
                       (1, entered("browse", 1, retried, retried))]  # fmt: skip
    assert e.add(state, [retried]) == 0  # the same copy again (a re-delivery) changes nothing


def test_late_data_is_recognised() -> None:
    e = engine()
    assert not e.is_late(tp(0, "Product Viewed"), now=60 * MIN)
    assert e.is_late(tp(0, "Product Viewed"), now=60 * MIN + 1)


def test_a_late_touchpoint_corrects_an_emitted_drop_off() -> None:
    state, e = CustomerState("c1"), engine()
    pv = tp(0, "Product Viewed")
    e.add(state, [pv])
    assert [s for s, _ in e.settle(state, 1 * MIN)] == [1]  # entered browse
    changes = e.settle(state, 11 * MIN)  # browse deadline (10 min) passed
    assert changes == [(1, run([pv], 11)[1])]
    wrong_drop = changes[0][1]
    # The add at minute 5 arrives only now: the customer did move on in time.
    pa = tp(5, "Product Added")
    e.add(state, [pa])
    changes = e.settle(state, 11 * MIN)
    assert (-1, wrong_drop) in changes
    assert (1, entered("cart", 2, pa, pv)) in changes
    cart_drop = [r for s, r in changes if s == 1 and isinstance(r, DropOff)]
    assert [(d.stage, d.at) for d in cart_drop] == [("cart", 10 * MIN)]
    assert e.settle(state, 11 * MIN) == []  # nothing changes without new data


def test_retract_all_withdraws_exactly_what_was_emitted() -> None:
    state, e = CustomerState("c1"), engine()
    e.add(state, [tp(0, "Product Viewed"), tp(1, "Product Added")])
    emitted = e.settle(state, 30 * MIN)
    assert sorted(e.retract_all(state), key=repr) == sorted(((-1, r) for _, r in emitted), key=repr)
    assert state.emitted == Counter()


def test_next_deadline_is_the_open_stage_timeout() -> None:
    state, e = CustomerState("c1"), engine()
    e.add(state, [tp(0, "Product Viewed"), tp(1, "Product Added")])
    e.settle(state, 2 * MIN)
    assert e.next_deadline(state) == 6 * MIN
    e.settle(state, 7 * MIN)
    assert e.next_deadline(state) is None  # dropped; nothing else can come due


def test_a_deadline_that_passed_unwatched_is_due_and_settles_with_its_true_time() -> None:
    """A worker settled the customer at minute 2 and went down; the cart deadline (minute 6)
    passed while nobody owned the customer. Found at minute 40, it is due at once, and the
    drop-off comes out as it would have on time, at minute 6."""
    state, e = CustomerState("c1"), engine()
    pv, pa = tp(0, "Product Viewed"), tp(1, "Product Added")
    e.add(state, [pv, pa])
    e.settle(state, 2 * MIN)
    assert e.next_deadline(state) == 6 * MIN  # in the past at minute 40: due at once
    changes = e.settle(state, 40 * MIN)
    drops = [r for sign, r in changes if sign > 0 and isinstance(r, DropOff)]
    assert [(d.stage, d.entered_at, d.at) for d in drops] == [("cart", 1 * MIN, 6 * MIN)]
    assert state.emitted == Counter(run([pv, pa], 7))  # what an on-time timer emitted
    assert e.next_deadline(state) is None


@pytest.mark.parametrize("timeout", ["0s", "-5m", "soon", True])
def test_invalid_durations_are_rejected(timeout: object) -> None:
    from tracker.errors import ConfigError

    text = f"""
journeys:
  - name: j
    window: 1h
    stages:
      - {{name: a, match: {{event: A}}, timeout: {timeout}}}
      - {{name: b, match: {{event: B}}}}
"""
    with pytest.raises(ConfigError) as info:
        loads(text, origin="j.yaml")
    assert str(info.value).startswith("j.yaml:6: journeys[0].stages[0].timeout:")


def test_the_shipped_example_journeys_load() -> None:
    from tracker.core.journeys.definition import load
    from tracker.settings import REPO_ROOT

    journeys = load(REPO_ROOT / "deploy" / "journeys.example.yaml")
    assert [j.name for j in journeys] == [
        "ecommerce_purchase", "ecommerce_delivery", "banking_account_opening",
        "telecom_plan_change", "hospitality_stay",
    ]  # fmt: skip
    shop = journeys[0]
    assert (shop.window_ms, [s.timeout_ms for s in shop.stages]) == (
        2 * 86_400_000, [30 * MIN, 120 * MIN, 20 * MIN, None],
    )  # fmt: skip
    page = Touchpoint(0, "m", "page", "Product X", "web", "/p/x", {})
    assert shop.stages[0].match.matches(page)
    assert not shop.stages[0].match.matches(Touchpoint(0, "m", "track", "Product X", "web", "", {}))
