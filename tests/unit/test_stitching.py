"""Rule 1 (identity) and the stitcher that joins identities, journeys and timers."""

from __future__ import annotations

import random
from collections import Counter
from itertools import permutations
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_journey_rules import MIN, SHOP
from tracker.core.identity import Identities, Link, Merges, links_of
from tracker.core.journeys.engine import JourneyEngine, Touchpoint, evaluate
from tracker.core.journeys.results import Conversion, DropOff, Result, StageEntered
from tracker.core.journeys.stitcher import Stitcher

LATENESS = 60 * MIN


def rec(
    t_min: float, mid: str, event: str, *, anon: str = "", user: str = "", type: str = "track",
    channel: str = "web", previous: str = "",
) -> dict[str, Any]:  # fmt: skip
    return {
        "message_id": mid, "type": type, "event": event, "anonymous_id": anon, "user_id": user,
        "previous_id": previous, "channel": channel, "event_time_ms": int(t_min * MIN),
        "properties": {}, "context": {},
    }  # fmt: skip


def test_links_of_identify_alias_and_plain_events() -> None:
    assert links_of(rec(1, "i", "", anon="a", user="u", type="identify")) == [
        Link("a", "u", MIN, "i")
    ]
    assert links_of(rec(1, "x", "E", anon="a", user="u")) == [Link("a", "u", MIN, "x")]
    assert links_of(rec(1, "al", "", user="new", previous="old", type="alias")) == [
        Link("old", "new", MIN, "al", alias=True)
    ]
    # An alias's own anonymousId links that device to the userId, as any message with both does.
    assert links_of(rec(1, "al", "", anon="d", user="new", previous="old", type="alias")) == [
        Link("old", "new", MIN, "al", alias=True), Link("d", "new", MIN, "al"),
    ]  # fmt: skip
    assert links_of(rec(1, "y", "E", anon="a")) == []
    assert links_of(rec(1, "z", "E", anon="u", user="u")) == []


def test_customer_key_is_the_user_id_of_the_latest_alias_in_any_order() -> None:
    links = [Link("u0", "u1", 5, "l1", alias=True), Link("u3", "u1", 3, "l2", alias=True),
             Link("u1", "u2", 9, "l3", alias=True)]  # fmt: skip
    for order in permutations(links):
        merges = Merges()
        for link in order:
            merges.add(link)
        assert {merges.key(i) for i in ("u0", "u1", "u2", "u3")} == {"u2"}
        assert merges.key("stranger") == "stranger"


def test_add_reports_every_id_whose_key_changed() -> None:
    merges = Merges()
    assert merges.add(Link("a1", "u1", 1, "l1", alias=True)) == [("a1", "u1")]
    assert merges.add(Link("a2", "u1", 2, "l2", alias=True)) == [("a2", "u1")]
    assert merges.add(Link("a1", "u1", 0, "l0", alias=True)) == []  # nothing new
    assert merges.add(Link("u1", "u2", 3, "l3", alias=True)) == [
        ("a1", "u2"), ("a2", "u2"), ("u1", "u2"),
    ]  # fmt: skip


@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 3), st.integers(0, 50),
                          st.booleans()), max_size=12),
       st.randoms(use_true_random=False))  # fmt: skip
def test_identity_keys_do_not_depend_on_link_order(
    raw: list[tuple[int, int, int, bool]], rnd: random.Random
) -> None:
    links = [Link(f"a{a}", f"u{u}", t, f"m{i}", alias) for i, (a, u, t, alias) in enumerate(raw)]
    shuffled = links[:]
    rnd.shuffle(shuffled)
    first, second = Identities(max_users=2), Identities(max_users=2)
    for link in links:
        first.add(link)
    for link in shuffled:
        second.add(link)
    every = [f"a{i}" for i in range(8)] + [f"u{i}" for i in range(4)]
    assert [first.user_key(i) for i in every] == [second.user_key(i) for i in every]
    for anon in every[:8]:
        for t in range(-1, 52):
            order = (t, "m5")
            assert first.key("", anon, order) == second.key("", anon, order)


def _apply(total: Counter[Result], changes: list[tuple[int, Result]]) -> None:
    for sign, result in changes:
        total[result] += sign
        assert total[result] >= 0


def test_phone_laptop_and_store_are_one_journey_even_when_the_phone_link_comes_last() -> None:
    stitcher = Stitcher(JourneyEngine([SHOP], lateness_ms=LATENESS))
    total: Counter[Result] = Counter()
    timeline = [
        rec(0, "p1", "Product Viewed", anon="anon-phone", channel="app"),
        rec(2, "l1", "Product Added", anon="anon-laptop"),
        rec(3, "l2", "", anon="anon-laptop", user="u1", type="identify"),
        rec(4, "l3", "Checkout Started", anon="anon-laptop", user="u1"),
        rec(9, "s1", "Purchase", user="u1", channel="store"),
    ]
    for r in timeline:
        _apply(total, stitcher.ingest([r], now=r["event_time_ms"]).changes)
    # Still unlinked: the phone visitor has an open browse stage, u1 has no journey.
    assert {r.customer for r in +total} == {"anon-phone"}
    _apply(total, stitcher.tick(now=11 * MIN))  # browse timeout (10 min) passes for the phone
    assert any(isinstance(r, DropOff) and r.customer == "anon-phone" for r in +total)
    # The phone's login arrives at minute 12: the phone visitor is u1.
    report = stitcher.ingest([rec(12, "p2", "", anon="anon-phone", user="u1", type="identify")],
                             now=12 * MIN)  # fmt: skip
    assert (report.merges, report.moved) == (0, 1)  # the phone's touchpoint moved to u1
    _apply(total, report.changes)
    settled = +total
    assert {r.customer for r in settled} == {"u1"}
    assert [(r.stage, r.channel) for r in settled if isinstance(r, StageEntered)] == [
        ("browse", "app"), ("cart", "web"), ("checkout", "web"), ("purchase", "store"),
    ]  # fmt: skip
    assert [r.time_to_convert_ms for r in settled if isinstance(r, Conversion)] == [9 * MIN]
    assert not any(isinstance(r, DropOff) for r in settled)


def test_tick_settles_only_customers_that_are_due() -> None:
    stitcher = Stitcher(JourneyEngine([SHOP], lateness_ms=LATENESS))
    stitcher.ingest([rec(0, "a", "Product Viewed", anon="x"),
                     rec(5, "b", "Product Viewed", anon="y")], now=5 * MIN)  # fmt: skip
    assert [(r.customer, r.at) for _, r in stitcher.tick(now=10 * MIN + 1)] == [("x", 10 * MIN)]
    assert stitcher.tick(now=10 * MIN + 2) == []
    assert [(r.customer, r.at) for _, r in stitcher.tick(now=15 * MIN + 1)] == [("y", 15 * MIN)]


def test_late_records_are_counted_and_left_out() -> None:
    stitcher = Stitcher(JourneyEngine([SHOP], lateness_ms=LATENESS))
    report = stitcher.ingest([rec(0, "a", "Product Viewed", anon="x")], now=LATENESS + 1)
    assert (report.late, report.changes, stitcher.customers) == (1, [], {})


ANONS, USERS = ["a1", "a2", "a3"], ["u1", "u2", "u3"]
EVENTS = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed", "FAQ Viewed"]
MAX_USERS = 2  # so that generated devices are often shared


@st.composite
def records(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Histories of a few devices used by a few people: shared devices, logins on several of
    them, aliases from anonymous ids and from userIds, events with and without a userId."""
    out = []
    for i in range(draw(st.integers(1, 18))):
        t = draw(st.integers(0, 120)) / 2
        kind = draw(st.sampled_from(["event", "event", "event", "identify", "alias"]))
        anon, user = draw(st.sampled_from(ANONS)), draw(st.sampled_from(USERS))
        if kind == "identify":
            out.append(rec(t, f"m{i}", "", anon=anon, user=user, type="identify"))
        elif kind == "alias":
            previous = draw(st.sampled_from([*ANONS, *USERS]))
            out.append(rec(t, f"m{i}", "", user=user, previous=previous, type="alias",
                           anon=draw(st.sampled_from(["", anon]))))  # fmt: skip
        else:
            who = draw(st.sampled_from(["anon", "user", "both"]))
            out.append(rec(t, f"m{i}", draw(st.sampled_from(EVENTS)),
                           anon="" if who == "user" else anon,
                           user="" if who == "anon" else user))  # fmt: skip
    return out


def reference(all_records: list[dict[str, Any]], now: int) -> Counter[Result]:
    """Rules 1-5 on the complete history, computed the obvious way."""
    ids = Identities(max_users=MAX_USERS)
    for r in all_records:
        for link in links_of(r):
            ids.add(link)
    by_customer: dict[str, dict[str, Touchpoint]] = {}
    for r in all_records:
        tp = Touchpoint.from_record(r)
        key = ids.key(r["user_id"], r["anonymous_id"], tp.order)
        by_customer.setdefault(key, {})[tp.message_id] = tp
    out: Counter[Result] = Counter()
    for key, tps in by_customer.items():
        out.update(evaluate(SHOP, key, sorted(tps.values(), key=lambda x: x.order), now))
    return out


@settings(max_examples=400, deadline=None)
@given(records(), st.randoms(use_true_random=False), st.integers(1, 3))
def test_any_arrival_order_with_late_links_sums_to_the_complete_history(
    history: list[dict[str, Any]], rnd: random.Random, chunk: int
) -> None:
    arrivals = [(r["event_time_ms"] + rnd.randint(0, LATENESS), r) for r in history]
    arrivals += [(t + rnd.randint(0, 5 * MIN), r) for t, r in arrivals if rnd.random() < 0.3]
    arrivals = [(min(t, r["event_time_ms"] + LATENESS), r) for t, r in arrivals]
    arrivals.sort(key=lambda a: a[0])
    stitcher = Stitcher(JourneyEngine([SHOP], lateness_ms=LATENESS), max_users=MAX_USERS)
    total: Counter[Result] = Counter()
    for i in range(0, len(arrivals), chunk):
        batch = arrivals[i : i + chunk]
        now = batch[0][0]  # processed when the first of them arrived: none is late
        report = stitcher.ingest([r for _, r in batch], now)
        assert report.late == 0
        _apply(total, report.changes)
        _apply(total, stitcher.tick(now))
    end = max(t for t, _ in arrivals) + 3 * 60 * MIN
    _apply(total, stitcher.tick(end))
    expected = reference(history, end)
    assert +total == expected
