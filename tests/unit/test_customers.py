"""The worker's core (tracker.core.journeys.customers): what it writes, what it refuses to write,
what it keeps per device, and that states read back from their bytes give the same results."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from tests.unit.test_journey_rules import MIN, SHOP
from tests.unit.test_stitching import LATENESS, rec
from tracker.core.journeys.customers import (
    STATE_WRITE_MAX_BYTES,
    Customers,
    Effects,
    StateCache,
)
from tracker.core.journeys.engine import CustomerState, JourneyEngine, Touchpoint
from tracker.core.journeys.results import Result
from tracker.core.journeys.stitcher import Stitcher


class Tables:
    """What the worker's tables hold, written from each batch's effects as the worker does."""

    def __init__(self) -> None:
        self.states: dict[str, bytes] = {}
        self.devices: dict[str, bytes] = {}
        self.owners: dict[str, str] = {}
        self.total: Counter[Result] = Counter()

    def core(self, engine: JourneyEngine, cache: Any) -> Customers:
        return Customers(
            engine,
            state_bytes=self.states.get,
            device_bytes=self.devices.get,
            owner_of=self.owners.get,
            cache=cache,
        )

    def write(self, fx: Effects) -> None:
        self.states.update(fx.states)
        self.devices.update(fx.devices)
        for sign, result, _ in fx.changes:
            self.total[result] += sign


def _tp(t_min: float, mid: str, event: str, engine: JourneyEngine) -> Touchpoint:
    tp = Touchpoint.from_record(rec(t_min, mid, event, anon="x"))
    tp.bits = engine.signature(tp)
    return tp


def _big_state(engine: JourneyEngine) -> CustomerState:
    """A state the engine's bounds never let grow this far: put in place as it stood."""
    big = CustomerState("bot")
    big.history = [_tp(0, f"{i:08d}-" + "m" * 200, "FAQ Viewed", engine) for i in range(5_000)]
    big.seen = {tp.message_id for tp in big.history}
    return big


def test_a_state_over_the_byte_bound_is_folded_before_it_is_written() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=LATENESS)
    tables = Tables()
    cache: dict[str, CustomerState] = {}
    core = tables.core(engine, cache)
    cache["bot"] = _big_state(engine)
    core.touchpoints([("bot", [_tp(1, "one-more", "Product Viewed", engine)])], {}, now=MIN)
    fx = core.commit()
    assert fx.refused == []
    assert 0 < len(fx.states["bot"]) <= engine.max_state_bytes


def test_a_state_too_big_for_kafka_is_refused_not_written_and_the_others_are() -> None:
    # Bounds set above Kafka's message size (a misconfiguration): the last guard refuses.
    engine = JourneyEngine(
        [SHOP], lateness_ms=LATENESS, max_live_touchpoints=10**6, max_state_bytes=10**8
    )
    tables = Tables()
    cache: dict[str, CustomerState] = {}
    core = tables.core(engine, cache)
    big = cache["bot"] = _big_state(engine)
    core.touchpoints([("bot", [_tp(1, "one-more", "Product Viewed", engine)])], {}, now=MIN)
    core.touchpoints([("small", [_tp(1, "s1", "Product Viewed", engine)])], {}, now=MIN)
    fx = core.commit()
    assert [key for key, _ in fx.refused] == ["bot"]
    assert fx.refused[0][1] > STATE_WRITE_MAX_BYTES
    assert set(fx.states) == {"small"}
    assert len(fx.states["small"]) < 1_000
    # The refused customer's results still come out, and its state stays held in memory.
    assert {r.customer for _, r, _ in fx.changes} == {"bot", "small"}
    assert cache["bot"] is big and len(big.history) == 5_001


def test_a_device_keeps_only_anonymous_touchpoints_a_link_can_still_move() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=LATENESS)
    stitcher = Stitcher(engine)
    stitcher.ingest([rec(0, "i", "", anon="d", user="u", type="identify")], now=0)
    stitcher.ingest([rec(1, "old", "Product Viewed", anon="d")], now=MIN)
    assert set(orjson.loads(stitcher.devices["d"])["p"]) == {"old"}
    later = 1 + (LATENESS + SHOP.window_ms) / MIN + 1  # minutes: "old" is beyond L + window
    stitcher.ingest([rec(later, "new", "Product Viewed", anon="d")], now=int(later * MIN))
    assert set(orjson.loads(stitcher.devices["d"])["p"]) == {"new"}
    assert [tp.message_id for tp in stitcher.customers["u"].history] == ["i", "old", "new"]


def test_a_moved_touchpoint_is_not_taken_out_by_its_own_move_arriving_late() -> None:
    """u1 is an alias of u2; the device's touchpoint went to u1 and on to u2. A login moves it
    from u1 to u2: taken out and put back where it is, never taken out after it arrived."""
    stitcher = Stitcher(JourneyEngine([SHOP], lateness_ms=LATENESS))
    total: Counter[Result] = Counter()
    for r in [
        rec(0, "al", "", user="u2", previous="u1", type="alias"),
        rec(1, "i1", "", anon="d", user="u1", type="identify"),
        rec(5, "pv", "Product Viewed", anon="d"),
        rec(3, "i2", "", anon="d", user="u2", type="identify"),
    ]:
        report = stitcher.ingest([r], now=6 * MIN)
        for sign, result in report.changes:
            total[result] += sign
    assert report.moved == 1
    assert [tp.message_id for tp in stitcher.customers["u2"].history] == ["al", "i1", "i2", "pv"]
    assert [(r.customer, r.at) for r in +total] == [("u2", 5 * MIN)]


def test_states_read_back_from_their_bytes_give_the_same_results() -> None:
    """A cache of one state: every other customer is loaded from what the last batch wrote."""
    engine = JourneyEngine([SHOP], lateness_ms=LATENESS)
    held, evicted = Tables(), Tables()
    cores = [held.core(engine, {}), evicted.core(engine, StateCache(1))]
    events = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed"]
    for step in range(12):
        now = (step + 1) * MIN
        key = f"c{step % 3}"
        tp = Touchpoint.from_record(rec(step, f"m{step}", events[step // 3], anon=key))
        tp.bits = engine.signature(tp)
        for core, tables in zip(cores, (held, evicted), strict=True):
            core.touchpoints([(key, [tp])], {}, now)
            tables.write(core.commit())
    for core, tables in zip(cores, (held, evicted), strict=True):
        core.settle_due(["c0", "c1", "c2"], 100 * MIN)
        tables.write(core.commit())
    assert +held.total == +evicted.total
    assert {(type(r).__name__, r.customer) for r in +held.total} >= {("Conversion", "c0")}
    assert held.states == evicted.states


class CountedTables(Tables):
    """Tables that count the core's reads of device entries and owners."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    def core(self, engine: JourneyEngine, cache: Any) -> Customers:
        def device(key: str) -> bytes | None:
            self.reads["device"] += 1
            return self.devices.get(key)

        def owner(key: str) -> str | None:
            self.reads["owner"] += 1
            return self.owners.get(key)

        return Customers(engine, state_bytes=self.states.get, device_bytes=device,
                         owner_of=owner, cache=cache)  # fmt: skip


def test_what_the_stores_already_answered_is_not_read_again_until_it_can_change() -> None:
    engine = JourneyEngine([SHOP], lateness_ms=LATENESS)
    tables = CountedTables()
    core = tables.core(engine, StateCache(10))

    def anonymous(t_min: float, mid: str, device: str = "d") -> Effects:
        tp = Touchpoint.from_record(rec(t_min, mid, "Product Viewed", anon=device))
        tp.bits = engine.signature(tp)
        core.touchpoints([], {device: [tp]}, now=int(t_min * MIN))
        fx = core.commit()
        tables.write(fx)
        return fx

    def forwarded(fx: Effects) -> list[tuple[str, list[str]]]:
        return [(key, [tp[1] for tp in msg["tps"]]) for key, msg in fx.forward]

    anonymous(1, "a1")
    anonymous(2, "a2")
    # The device's entry and its owner were read once: it has no entry, and its state is held.
    assert tables.reads == {"device": 1, "owner": 1}
    # A login: the device notice gives it an entry, and its next touchpoint goes to the user.
    core.journey_input(
        [("d", {"kind": "device", "links": [[0, "i", "u"]], "shared": False})], now=3 * MIN
    )
    fx = core.commit()
    tables.write(fx)
    assert forwarded(fx) == [("u", ["a1", "a2"])]  # one move for both
    assert core.cache["d"].history == []  # moved out of the device's own customer
    assert forwarded(anonymous(3, "a3")) == [("u", ["a3"])]
    # An owner notice takes a held customer out of the cache, so its owner is read again.
    tables.owners["u"] = "v"
    core.journey_input([("u", {"kind": "owner", "owner": "v"})], now=4 * MIN)
    tables.write(core.commit())
    reads = tables.reads["owner"]
    core.touchpoints([("u", [_tp(5, "u5", "Product Viewed", engine)])], {}, now=5 * MIN)
    assert tables.reads["owner"] == reads + 1
    assert core.commit().forward[0][0] == "v"
    # Partitions changing hands: nothing held is trusted any more.
    core.forget_cached()
    anonymous(6, "e1", device="e")
    anonymous(7, "e2", device="e")
    before = tables.reads["device"]
    core.forget_cached()
    anonymous(8, "e3", device="e")
    assert tables.reads["device"] == before + 1


def test_a_timer_of_a_customer_given_to_another_does_not_hold_its_state() -> None:
    """The owner entry was written, the worker died before the tombstone: the state is live in
    the store, its timer fires. It must not come back into the cache, or the key's own
    touchpoints would stay here instead of going on to the owner."""
    engine = JourneyEngine([SHOP], lateness_ms=LATENESS)
    tables = Tables()
    core = tables.core(engine, StateCache(10))
    core.touchpoints([("k", [_tp(1, "k1", "Product Viewed", engine)])], {}, now=2 * MIN)
    tables.write(core.commit())
    core.forget_cached()  # the restart
    tables.owners["k"] = "o"
    core.settle_due(["k"], now=60 * MIN)  # past the browse timeout
    fx = core.commit()
    assert fx.changes == [] and fx.states == {}
    assert "k" not in core.cache
    core.touchpoints([("k", [_tp(61, "k2", "Product Added", engine)])], {}, now=61 * MIN)
    assert [key for key, _ in core.commit().forward] == ["o"]
