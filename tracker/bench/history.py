"""``tracker bench history``: the cost of one more touchpoint for a customer with a long past.

One customer's history of N touchpoints, spread evenly over a year, is fed through the engine as
the worker feeds it (each touchpoint added and settled as it arrives, so the state folds as it
goes). Then touchpoints arrive at "now", each one timed (CPU time of this process, so other
work on the machine counts less) along the worker's path for a state it does not hold in
memory: stored bytes -> load -> add -> settle -> dump. With bounded state neither the time per
touchpoint nor the stored bytes grow with N; they follow the touchpoints of the last hours.
"""

from __future__ import annotations

import operator
import random
import statistics
import time
from typing import Any

import orjson

from tracker.bench.worker import BENCH_JOURNEYS, EVENTS
from tracker.core.journeys.codec import dump_state, load_state
from tracker.core.journeys.definition import loads
from tracker.core.journeys.engine import CustomerState, JourneyEngine, Touchpoint
from tracker.settings import Settings

YEAR_MS = 365 * 86_400_000
LATENESS_MS = 3_600_000
SIZES = (10, 1_000, 10_000, 100_000)
TARGET_RATIO = 2.0  # time per touchpoint at N=100,000 over N=10


def _touchpoint(t: int, i: int, rnd: random.Random) -> Touchpoint:
    event = rnd.choice(EVENTS)
    return Touchpoint(t, f"h-{i}", "track", event, rnd.choice(["web", "app"]), "",
                      {"load_ms": rnd.randint(200, 4000)})  # fmt: skip


def _grown(engine: JourneyEngine, n: int, start: int, rnd: random.Random) -> CustomerState:
    state = CustomerState("bench-customer")
    step = YEAR_MS // n
    for i in range(n):
        t = start + i * step
        engine.add(state, [_touchpoint(t, i, rnd)])
        engine.settle(state, t + 1000)
    return state


def _time_adds(engine: JourneyEngine, raw: bytes, now: int, adds: int, rnd: random.Random) -> float:
    """Seconds per touchpoint added to the stored state ``raw`` (each one to the same state, as
    the next touchpoint of that customer) along the cache-miss path."""
    began = time.process_time()  # CPU time: other processes on the machine do not count
    for i in range(adds):
        t = now + i * 10
        state = load_state(orjson.loads(raw), engine.fingerprint)
        engine.add(state, [_touchpoint(t, 10_000_000 + i, rnd)])
        engine.settle(state, t + 1000)
        orjson.dumps(dump_state(state, engine.fingerprint))
    return (time.process_time() - began) / adds


def run(
    settings: Settings, sizes: tuple[int, ...] = SIZES, adds: int = 500, rounds: int = 40
) -> dict[str, Any]:
    journeys = loads(BENCH_JOURNEYS)
    engine = JourneyEngine(
        journeys,
        lateness_ms=LATENESS_MS,
        max_live_touchpoints=settings.journey_max_live_touchpoints,
        max_state_bytes=settings.journey_max_state_bytes,
    )
    start = 1_700_000_000_000
    now = start + YEAR_MS
    stored = []
    for n in sizes:
        began = time.perf_counter()
        state = _grown(engine, n, start, random.Random(n))
        engine.settle(state, now)  # as a timer would have: its deadlines and fold are current
        raw = orjson.dumps(dump_state(state, engine.fingerprint))
        stored.append((n, raw, len(state.history), time.perf_counter() - began))
    # Short rounds go over every size in turn, so a busy machine slows them all alike; a ratio
    # is the median of the ratios within each round (the sizes timed side by side).
    timed: dict[int, list[float]] = {n: [] for n in sizes}
    rnd = random.Random(0)
    for r in range(rounds):
        for n, raw, _, _ in stored:
            timed[n].append(_time_adds(engine, raw, now + r * adds * 10, adds, rnd))
    first = timed[sizes[0]]
    runs = []
    for n, raw, live, grown_s in stored:
        runs.append(
            {
                "touchpoints": n,
                "us_per_add": round(statistics.median(timed[n]) * 1e6, 1),
                "ratio": round(statistics.median(map(operator.truediv, timed[n], first)), 2),
                "state_bytes": len(raw),
                "live_touchpoints": live,
                "grow_s": round(grown_s, 1),
            }
        )
        print(f"N={n:>7,}: {runs[-1]['us_per_add']:8.1f} us/add, state {len(raw):,} B, "
              f"{live} live (history built in {grown_s:.1f}s)")  # fmt: skip
    return {
        "runs": runs,
        "bound_bytes": settings.journey_max_state_bytes,
        "target_ratio": TARGET_RATIO,
        "lateness_ms": LATENESS_MS,
    }
