"""``tracker bench e2e``: how long from the collector accepting a touchpoint to it being queryable,
and from a drop-off's deadline to the drop-off being queryable, at fixed offered loads.

The whole stack runs on this machine (embedded Kafka unless ``TRACKER_KAFKA_BOOTSTRAP`` is set,
one worker, one collector, chdb) with the short-timeout demo journeys, and the simulator sends
the scenario mix as a server-side relay would (100 messages per request) at each load in turn.

What is measured, from columns the warehouse keeps:

- *accepted -> queryable*: ``touchpoints.inserted_at - received_at``. ``received_at`` is stamped
  by the collector when the request arrives (before Kafka acknowledges it); ``inserted_at`` is
  ClickHouse's clock when the worker's insert runs. The row is visible once that insert returns,
  so the figure leaves out the insert's own duration (``tracker_sink_write_seconds``, reported
  beside it as its mean).
- *achieved events/s*: touchpoints the collector received during the load's window, beside
  what the simulator planned to send in it (the load ramps up as customers arrive).
- *deadline -> queryable*: for each drop-off in ``journey_results``, the first time it was
  written (``journey_result_changes.inserted_at`` of its first emission) less ``at``, the
  deadline that passed. It includes the worker's timer period (250 ms). The first emission, not
  the row's own ``inserted_at``: a visitor's drop-off is emitted under the device's key and,
  once the visitor logs in, withdrawn there and emitted again under the user's key; that second
  write is attribution, not detection (counting it put the p99 at 10.3 s where first emissions
  gave 1.5 s, on the same data).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tracker import defaults
from tracker.core.journeys.definition import load
from tracker.demo.scrape import scrape, total
from tracker.demo.settle import wait_for_partitions, wait_settled
from tracker.querying import run_query
from tracker.settings import Settings
from tracker.simulate.run import simulate
from tracker.stack import Stack

JOURNEYS = defaults.path("journeys.demo.yaml")
TARGET_P99_S = 2.0


def _quantiles(settings: Settings, sql: str) -> tuple[float, float, int]:
    rows = run_query(settings, sql).rows
    p50, p99, n = rows[0]
    return float(p50) / 1000, float(p99) / 1000, int(n)


def _measure(
    settings: Settings, urls: dict[str, str], stack: Stack, load_per_s: int, seconds: float
) -> dict[str, Any]:
    journeys = load(JOURNEYS)
    sink_before = scrape(urls["worker"])
    sim = asyncio.run(
        simulate(
            urls["collector"],
            "bench",
            journeys,
            rate=load_per_s,
            duration=seconds,
            seed=load_per_s,
            relay=True,
            concurrency=32,
        )
    )
    db = settings.clickhouse_database
    wait_settled(
        lambda: (
            run_query(
                settings, f"SELECT kind, count() FROM {db}.journey_results FINAL GROUP BY kind"
            ).rows
        ),
        urls["collector"],
        urls["worker"],
        sim,
        on_poll=lambda _: stack.check(),
        timeout=300,
    )
    start, end = sim.start_ms, sim.start_ms + round(seconds * 1000)
    window = f"fromUnixTimestamp64Milli({start}) AND fromUnixTimestamp64Milli({end})"
    achieved = run_query(
        settings, f"SELECT count() FROM {db}.touchpoints WHERE received_at BETWEEN {window}"
    ).rows[0][0]
    ingest = _quantiles(
        settings,
        (
            "SELECT quantileExact(0.5)(d), quantileExact(0.99)(d), count() FROM (SELECT "
            f"dateDiff('millisecond', received_at, inserted_at) AS d FROM {db}.touchpoints "
            f"WHERE received_at BETWEEN {window})"
        ),
    )
    # A drop-off's first emission, whatever customer key it had then: a login that later moves
    # the visitor's touchpoints to the user re-emits it under the user's key (and withdraws it
    # from the device's), which is not a later detection. Matched on the deadline too, so a
    # drop-off that late data moved counts from when it was emitted with its final deadline.
    first_emitted = (
        "SELECT journey, instance, level, at, min(inserted_at) AS first "
        f"FROM {db}.journey_result_changes WHERE kind = 'dropoff' AND sign > 0 "
        "GROUP BY journey, instance, level, at"
    )
    dropoff = _quantiles(
        settings,
        (
            "SELECT quantileExact(0.5)(d), quantileExact(0.99)(d), count() FROM (SELECT "
            f"dateDiff('millisecond', r.at, e.first) AS d FROM {db}.journey_results AS r FINAL "
            f"INNER JOIN ({first_emitted}) AS e ON r.journey = e.journey "
            "AND r.instance = e.instance AND r.level = e.level AND r.at = e.at "
            f"WHERE r.kind = 'dropoff' AND r.at >= fromUnixTimestamp64Milli({start}))"
        ),
    )
    sink_after = scrape(urls["worker"])
    writes = total(sink_after, "tracker_sink_write_seconds_count", table="touchpoints") - total(
        sink_before, "tracker_sink_write_seconds_count", table="touchpoints"
    )
    write_s = total(sink_after, "tracker_sink_write_seconds_sum", table="touchpoints") - total(
        sink_before, "tracker_sink_write_seconds_sum", table="touchpoints"
    )
    # Customers arrive from the first second, but their touchpoints spread over the next ones:
    # what was due in the window is the simulator's plan, not load x seconds.
    due = sum(n for second, n in sim.truth.sends_by_second.items() if second < seconds)
    return {
        "offered_per_s": load_per_s,
        "due_in_window_per_s": round(due / seconds),
        "achieved_per_s": round(int(achieved) / seconds),
        "messages": sim.stats.accepted,
        "retries": sim.stats.retries,
        "ingest_p50_s": ingest[0],
        "ingest_p99_s": ingest[1],
        "ingest_samples": ingest[2],
        "insert_mean_s": round(write_s / writes, 4) if writes else None,
        "dropoff_p50_s": dropoff[0],
        "dropoff_p99_s": dropoff[1],
        "dropoff_samples": dropoff[2],
    }


def run(settings: Settings, *, loads: list[int], seconds: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tracker-bench-e2e-"))
    s = settings.model_copy(
        update={
            "data_dir": workdir,
            "journeys_file": JOURNEYS,
            "kafka_port": 0,
            "app_id": f"bench-e2e-{uuid.uuid4().hex[:8]}",
        }
    )
    env = {
        "TRACKER_DATA_DIR": str(workdir),
        "TRACKER_JOURNEYS_FILE": str(JOURNEYS),
        "TRACKER_APP_ID": s.app_id,
        "TRACKER_LOG_LEVEL": "warning",
    }
    stack = Stack(s, env=env, log_dir=workdir / "logs")
    results = []
    try:
        stack.start(collector_port=0, worker_port=0)
        urls = {c.name: c.url for c in stack.children}
        wait_for_partitions(urls["worker"], stack.check)
        for load_per_s in loads:
            began = time.monotonic()
            results.append(_measure(s, urls, stack, load_per_s, seconds))
            print(f"load {load_per_s}/s measured in {time.monotonic() - began:.0f}s", flush=True)
    finally:
        stack.stop()
    return {
        "seconds_per_load": seconds,
        "loads": results,
        "target_p99_s": TARGET_P99_S,
        "data_dir": str(workdir),
    }
