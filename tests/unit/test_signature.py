"""A touchpoint's rule bits, as the engine caches what its type, event name and channel decide,
are exactly the rules it matches one by one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tracker.core.journeys.definition import loads
from tracker.core.journeys.engine import JourneyEngine, Touchpoint

JOURNEYS = """
journeys:
  - name: shop
    window: 1h
    stages:
      - {name: browse, match: {event: "Product *"}}
      - {name: cart, match: {event: Product Added, channel: web}}
      - {name: paid, match: {any: [{event: Order Completed}, {type: page, path: /thanks*},
                                   {event: Purchase, where: {total: {gt: 10}}}]}}
    pain:
      - {name: slow, match: {event: Page Loaded, where: {load_ms: {gt: 3000}}}}
      - {name: error_page, match: {path: "/error*"}}
    love:
      - {name: big, match: {type: track, channel: [app, store], where: {total: {gte: 100}}}}
"""
ENGINE = JourneyEngine(loads(JOURNEYS), lateness_ms=60_000)

touchpoints = st.builds(
    lambda type_, event, channel, path, props: Touchpoint(
        0, "m", type_, event, channel, path, props
    ),
    st.sampled_from(["track", "page", "screen"]),
    st.sampled_from(["Product Viewed", "Product Added", "Order Completed", "Purchase",
                     "Page Loaded", "Other"]),
    st.sampled_from(["web", "app", "store"]),
    st.sampled_from(["", "/thanks", "/thanks/1", "/error/500", "/p/1"]),
    st.fixed_dictionaries({}, optional={"total": st.integers(0, 200),
                                        "load_ms": st.integers(0, 6000)}),
)  # fmt: skip


@given(st.lists(touchpoints, min_size=1, max_size=20))
def test_cached_signatures_are_the_rules_matched_one_by_one(tps: list[Touchpoint]) -> None:
    for tp in tps:  # the same triples again and again: the cache answers most of them
        one_by_one = sum(1 << i for i, rule in enumerate(ENGINE.rules) if rule.matches(tp))
        assert ENGINE.signature(tp) == one_by_one
