"""Rule 1 with hand-computed expectations: shared devices, kiosks, aliases and late links."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_journey_rules import MIN, SHOP
from tests.unit.test_stitching import LATENESS, rec
from tracker.core.identity import Identities, Link
from tracker.core.journeys.engine import JourneyEngine
from tracker.core.journeys.results import Conversion, DropOff, Result, StageEntered
from tracker.core.journeys.stitcher import IngestReport, Stitcher


def settled(
    records: list[dict[str, Any]], *, max_users: int = 10, end_min: float = 300
) -> tuple[Counter[Result], list[IngestReport]]:
    """Ingest one record at a time, each at its own event time (or later, for records listed
    after a later one), then let every deadline pass; the sum of the signed changes."""
    stitcher = Stitcher(JourneyEngine([SHOP], lateness_ms=LATENESS), max_users=max_users)
    total: Counter[Result] = Counter()
    reports = []
    now = 0
    for r in records:
        now = max(now, r["event_time_ms"])
        report = stitcher.ingest([r], now)
        reports.append(report)
        for sign, result in [*report.changes, *stitcher.tick(now)]:
            total[result] += sign
            assert total[result] >= 0
    for sign, result in stitcher.tick(int(end_min * MIN)):
        total[result] += sign
    return +total, reports


def summary(results: Counter[Result]) -> list[tuple[str, str, str, float]]:
    """(customer, kind, stage, minute) of every result, sorted."""
    out = []
    for r in results:
        if isinstance(r, StageEntered):
            out.append((r.customer, "stage", r.stage, r.at / MIN))
        elif isinstance(r, DropOff):
            out.append((r.customer, "dropoff", r.stage, r.at / MIN))
        elif isinstance(r, Conversion):
            out.append((r.customer, "conversion", "", r.at / MIN))
    return sorted(out)


def shuffled_too(records: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The same records in another order, some twice; all within the allowed lateness."""
    rnd = random.Random(seed)
    out = records + rnd.sample(records, len(records) // 2)
    rnd.shuffle(out)
    return out


def test_a_shared_laptop_keeps_user_a_and_user_b_apart() -> None:
    laptop = [
        rec(0, "1", "Product Viewed", anon="laptop"),  # anonymous: before A logs in -> A
        rec(1, "2", "", anon="laptop", user="A", type="identify"),
        rec(2, "3", "Product Added", anon="laptop", user="A"),
        rec(20, "4", "", anon="laptop", user="B", type="identify"),
        rec(21, "5", "Product Viewed", anon="laptop"),  # anonymous, after B logged in -> B
        rec(22, "6", "Product Added", anon="laptop", user="B"),
        rec(23, "7", "Checkout Started", anon="laptop", user="B"),
        rec(24, "8", "Order Completed", anon="laptop", user="B"),
    ]
    expected = [
        ("A", "dropoff", "cart", 7.0),  # the cart timeout (5 min): B's purchase is not A's
        ("A", "stage", "browse", 0.0),
        ("A", "stage", "cart", 2.0),
        ("B", "conversion", "", 24.0),
        ("B", "stage", "browse", 21.0),
        ("B", "stage", "cart", 22.0),
        ("B", "stage", "checkout", 23.0),
        ("B", "stage", "purchase", 24.0),
    ]
    results, reports = settled(laptop)
    assert summary(results) == expected
    assert sum(r.merges for r in reports) == 0
    for seed in range(20):
        assert summary(settled(shuffled_too(laptop, seed))[0]) == expected


def test_a_kiosk_past_the_bound_keeps_its_anonymous_touchpoints_on_its_own() -> None:
    kiosk = [rec(3, "anon-pv", "Product Viewed", anon="kiosk")]
    for i in range(5):  # five shoppers log in on the kiosk, one every 20 minutes
        kiosk += [
            rec(20 * i, f"i{i}", "", anon="kiosk", user=f"U{i}", type="identify"),
            rec(20 * i + 1, f"v{i}", "Product Viewed", anon="kiosk", user=f"U{i}"),
        ]
    kiosk.sort(key=lambda r: r["event_time_ms"])
    results, reports = settled(kiosk, max_users=3)
    assert summary(results) == sorted(
        [("kiosk", "stage", "browse", 3.0), ("kiosk", "dropoff", "browse", 13.0)]
        + [(f"U{i}", k, "browse", 20 * i + 1 + d) for i in range(5)
           for k, d in (("stage", 0), ("dropoff", 10))]
    )  # fmt: skip
    # The fourth shopper made the kiosk shared: the anonymous view left U0 then, and only then.
    assert [r.shared for r in reports] == [0] * 7 + [1, 0, 0, 0]
    assert [r.moved for r in reports] == [0] * 7 + [1, 0, 0, 0]
    # Under the bound, the anonymous view belongs to the user logged in at the time.
    under, _ = settled(kiosk[:6], max_users=3)
    # (U0 is at browse since minute 1, so it changes none of U0's results.)
    assert {r[0] for r in summary(under)} == {"U0", "U1"}


def test_alias_from_an_anonymous_id_and_from_an_earlier_user_id() -> None:
    history = [
        rec(0, "1", "Product Viewed", anon="visitor"),
        rec(1, "2", "", user="old", previous="visitor", type="alias"),
        rec(2, "3", "Product Added", user="old"),
        # The alias's own anonymousId (the phone) is linked to the userId like an identify.
        rec(3, "4", "", anon="phone", user="new", previous="old", type="alias"),
        rec(4, "5", "Checkout Started", anon="phone"),
        rec(5, "6", "Order Completed", user="new"),
    ]
    expected = [
        ("new", "conversion", "", 5.0),
        ("new", "stage", "browse", 0.0),
        ("new", "stage", "cart", 2.0),
        ("new", "stage", "checkout", 4.0),
        ("new", "stage", "purchase", 5.0),
    ]
    results, reports = settled(history)
    assert summary(results) == expected
    assert sum(r.merges for r in reports) == 2  # "visitor" folded into "old", "old" into "new"
    for seed in range(20):
        assert summary(settled(shuffled_too(history, seed))[0]) == expected


def test_a_late_identify_moves_the_touchpoints_after_it_to_the_other_user() -> None:
    device = [
        rec(0, "1", "Product Viewed", anon="d"),
        rec(1, "2", "", anon="d", user="A", type="identify"),
        rec(6, "3", "Product Added", anon="d"),
        rec(7, "4", "Checkout Started", anon="d", user="A"),
    ]
    before, _ = settled(device)
    assert summary(before) == [
        ("A", "dropoff", "checkout", 60.0),  # no timeout at checkout: the window's end
        ("A", "stage", "browse", 0.0), ("A", "stage", "cart", 6.0), ("A", "stage", "checkout", 7.0),
    ]  # fmt: skip
    # B's login at minute 5 arrives last: the anonymous add-to-cart at 6 was B's. A never got
    # to the cart (the checkout at 7 cannot skip it) and drops off at browse; B's lone add to
    # cart opens nothing.
    late = rec(5, "5", "", anon="d", user="B", type="identify")
    after, reports = settled([*device, late])
    assert summary(after) == [("A", "dropoff", "browse", 10.0), ("A", "stage", "browse", 0.0)]
    assert reports[-1].moved == 1
    withdrawn = [r for sign, r in reports[-1].changes if sign < 0]
    assert sorted(r.stage for r in withdrawn if isinstance(r, StageEntered)) == [
        "cart", "checkout"
    ]  # fmt: skip
    # An even earlier login, by B before A: the view before every login is then B's.
    earliest = rec(0.5, "0", "", anon="d", user="B", type="identify")
    results, _ = settled([*device, late, earliest])
    assert ("B", "stage", "browse", 0.0) in summary(results)
    assert not any(c == "A" and s == "browse" for c, _, s, _ in summary(results))


def test_a_late_link_between_repeats_of_one_user_splits_them() -> None:
    ids = Identities()
    for t in (1, 5, 9):  # the SDK repeats the pair on every event after A's login
        ids.add(Link("d", "A", t, f"a{t}"), horizon=t - 60)
    assert ids.add(Link("d", "B", 3, "b3"), horizon=3 - 60) == ([], True)
    assert [ids.owner("", "d", (t, "x")) for t in (0, 2, 4, 6, 10)] == ["A", "A", "B", "A", "A"]
    # Repeats older than the horizon can no longer be split; they are dropped, the rest kept.
    ids.add(Link("d", "A", 100, "a100"), horizon=50)
    assert ids.devices["d"].links == [(1, "a1", "A"), (3, "b3", "B"), (5, "a5", "A"),
                                      (100, "a100", "A")]  # fmt: skip


def test_links_to_one_user_never_join_users_and_the_bound_is_on_distinct_users() -> None:
    ids = Identities(max_users=2)
    for i, user in enumerate(["A", "B", "A", "B", "A"]):
        ids.add(Link("laptop", user, i, f"m{i}"))
    assert (ids.user_key("A"), ids.user_key("B"), ids.is_shared("laptop")) == ("A", "B", False)
    ids.add(Link("laptop", "C", 9, "m9"))
    assert ids.is_shared("laptop")
    assert ids.owner("", "laptop", (1, "z")) == "laptop"
    assert ids.devices["laptop"].links == []  # nothing kept for a shared device


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 60), st.sampled_from(["A", "A", "A", "B", "C"]),
                       st.integers(0, 10)), min_size=1, max_size=30),
    st.randoms(use_true_random=False),
)  # fmt: skip
def test_device_links_compacted_as_they_arrive_attribute_like_the_complete_set(
    raw: list[tuple[int, str, int]], rnd: random.Random
) -> None:
    """Links (mostly repeats of one user, as SDKs send them) arrive up to L = 10 after their
    time, in any order; repeats are compacted at each arrival's horizon. Every anonymous
    touchpoint is then attributed as with every link kept."""
    lateness = 10
    links = [Link("d", user, t, f"m{i:02d}") for i, (t, user, _) in enumerate(raw)]
    arrivals = sorted((link.t + delay, i) for i, (link, (_, _, delay)) in
                      enumerate(zip(links, raw, strict=True)))  # fmt: skip
    live, complete = Identities(), Identities()
    for now, i in arrivals:
        live.add(links[i], horizon=now - lateness)
    for link in rnd.sample(links, len(links)):
        complete.add(link)
    assert live.is_shared("d") == complete.is_shared("d")
    for t in range(-1, 72):
        for mid in ("", "m15", "zz"):
            assert live.owner("", "d", (t, mid)) == complete.owner("", "d", (t, mid)), (t, mid)
