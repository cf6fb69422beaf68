"""``tracker simulate``: plan customers, send their touchpoints on schedule, keep the truth.

Customers arrive over ``duration`` seconds, paced so their touchpoints come at about ``rate`` per
second; the run goes on until the last delivery of the last customer is acknowledged (a customer
who arrived near the end still finishes). Deliveries that fall due together from the same
back-office system go as one batch; with ``relay`` everything due together goes in batches of up
to 100 messages, as a server-side forwarder would send it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tracker.core.journeys.definition import Journey
from tracker.simulate.generate import DEVICE_ROUTES_PREFIX, CustomerPlan, Delivery, Planner, Touch
from tracker.simulate.sender import Sender, SendStats
from tracker.simulate.truth import Truth

RELAY_BATCH = 100


@dataclass
class Progress:
    elapsed: float
    sent: int  # messages acknowledged so far
    customers: int
    stats: SendStats
    truth: Truth


@dataclass
class SimulationResult:
    truth: Truth
    stats: SendStats
    start_ms: int
    seconds: float
    customers: int


async def simulate(
    url: str,
    write_key: str,
    journeys: tuple[Journey, ...],
    *,
    scenario: str = "mix",
    rate: float = 50.0,
    duration: float = 30.0,
    seed: int = 1,
    relay: bool = False,
    concurrency: int = 16,
    truth_file: Path | None = None,
    on_progress: Callable[[Progress], Awaitable[None] | None] | None = None,
) -> SimulationResult:
    planner = Planner(journeys, scenario, seed)
    truth = Truth(journeys)
    start_ms = int(time.time() * 1000)
    began = time.monotonic()
    customers: Iterator[CustomerPlan] = planner.customers(rate, duration)
    pending: list[Delivery] = []
    seq = itertools.count()
    upcoming = next(customers, None)
    admitted = 0

    async with Sender(url, write_key, start_ms=start_ms, concurrency=concurrency) as sender:
        reporter = None
        if on_progress is not None:
            reporter = asyncio.create_task(
                _report(
                    on_progress,
                    lambda: Progress(
                        time.monotonic() - began,
                        sender.stats.accepted,
                        admitted,
                        sender.stats,
                        truth,
                    ),
                )
            )
        try:
            while pending or upcoming is not None:
                # Plan every customer who has arrived by the time the next delivery is due.
                while upcoming is not None and (
                    not pending or upcoming.touches[0].t <= pending[0].at
                ):
                    truth.add(upcoming)
                    admitted += 1
                    for d in upcoming.deliveries:
                        d.seq = next(seq)
                        heapq.heappush(pending, d)
                    upcoming = next(customers, None)
                if not pending:
                    continue
                delay = pending[0].at - (time.monotonic() - began)
                if delay > 0:
                    await asyncio.sleep(delay)
                now = time.monotonic() - began
                due: list[Delivery] = []
                while pending and pending[0].at <= now:
                    due.append(heapq.heappop(pending))
                for batch in _batches(due, relay=relay):
                    await sender.submit(batch)
            await sender.drain()
        finally:
            if reporter is not None:
                reporter.cancel()
    seconds = time.monotonic() - began
    if truth_file is not None:
        truth.write(
            truth_file,
            scenario=scenario,
            seed=seed,
            rate=rate,
            duration=duration,
            started_at_ms=start_ms,
        )
    return SimulationResult(truth, sender.stats, start_ms, seconds, admitted)


def _batches(due: list[Delivery], *, relay: bool) -> list[list[Touch]]:
    """Requests for the deliveries due now: a device's batch goes as it is; back-office systems
    send what they collected together; a relay sends everything in batches of 100."""
    if relay:
        touches = [t for d in due for t in d.touches]
        return [touches[i : i + RELAY_BATCH] for i in range(0, len(touches), RELAY_BATCH)]
    out: list[list[Touch]] = []
    systems: dict[str, list[Touch]] = {}
    for d in due:
        if d.route.startswith(DEVICE_ROUTES_PREFIX):
            out.append(d.touches)
        else:
            systems.setdefault(d.route, []).extend(d.touches)
    for touches in systems.values():
        out += [touches[i : i + RELAY_BATCH] for i in range(0, len(touches), RELAY_BATCH)]
    return out


async def _report(
    callback: Callable[[Progress], Awaitable[None] | None], snapshot: Callable[[], Progress]
) -> None:
    while True:
        await asyncio.sleep(1.0)
        result = callback(snapshot())
        if asyncio.iscoroutine(result):
            await result
