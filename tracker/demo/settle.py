"""When a run's results have settled: everything accepted was consumed, the last planned deadline
is behind us by a margin, and the results no longer change from one look to the next."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from tracker.demo.scrape import scrape, total
from tracker.errors import TrackerError
from tracker.simulate.run import SimulationResult

# After the last planned deadline: the worker's timer period, a sink flush, and room to spare.
SETTLE_MARGIN_S = 3.0


def wait_for_partitions(
    worker_url: str, check: Callable[[], None], *, timeout: float = 120.0
) -> None:
    """The worker listens before it has joined its consumer group; traffic waits for that."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        check()
        if total(scrape(worker_url), "tracker_worker_assigned_partitions") > 0:
            return
        time.sleep(0.2)
    raise TrackerError(f"the worker was given no partitions within {timeout:.0f}s")


def wait_settled(
    results: Callable[[], Sequence[Any]],
    collector_url: str,
    worker_url: str,
    sim: SimulationResult,
    *,
    on_poll: Callable[[list[Any]], None] | None = None,
    timeout: float = 180.0,
    interval: float = 1.0,
) -> bool:
    """True once settled; False if ``timeout`` passed first. ``results()`` returns rows that
    change whenever the results do (counts per journey, kind and stage)."""
    due = sim.start_ms / 1000 + sim.truth.last_deadline + SETTLE_MARGIN_S
    give_up = time.monotonic() + timeout
    previous = None
    while time.monotonic() < give_up:
        accepted = total(scrape(collector_url), "tracker_events_accepted_total")
        consumed = total(scrape(worker_url), "tracker_worker_events_total")
        rows = sorted(results())
        if on_poll is not None:
            on_poll(rows)
        if consumed >= accepted and time.time() > due and rows == previous:
            return True
        previous = rows
        time.sleep(interval)
    return False
