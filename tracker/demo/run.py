"""``tracker demo``: the whole product on this machine, with customers you can watch.

Starts the embedded stack in ``<data_dir>/demo`` (emptied first) with the short-timeout journeys of
the packaged ``journeys.demo.yaml``, sends the scenario mix for ``duration`` seconds, shows funnels
and drop-offs live, waits until the results settle, then reports every funnel figure beside the
simulator's ground truth and writes the report as an HTML page.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tracker import defaults
from tracker.core.journeys.definition import Journey, load
from tracker.demo import report
from tracker.demo.live import LiveView, Snapshot
from tracker.demo.settle import wait_for_partitions, wait_settled
from tracker.querying import run_query
from tracker.settings import Settings
from tracker.simulate.run import Progress, SimulationResult, simulate
from tracker.stack import Stack
from tracker.warehouse.client import QueryResult

DEMO_JOURNEYS = defaults.path("journeys.demo.yaml")
SETTLE_TIMEOUT_S = 180.0


@dataclass
class DemoOutcome:
    matched: bool
    checked: int
    mismatches: list[str]
    html: Path
    data_dir: Path


def demo_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "data_dir": settings.data_dir / "demo",
            "journeys_file": DEMO_JOURNEYS,
            "kafka_port": 0,
            "app_id": "touchpoint-tracker-demo",
        }
    )


def child_env(s: Settings) -> dict[str, str]:
    return {
        "TRACKER_DATA_DIR": str(s.data_dir.resolve()),
        "TRACKER_JOURNEYS_FILE": str(s.journeys_file),
        "TRACKER_KAFKA_PORT": "0",
        "TRACKER_APP_ID": s.app_id,
        "TRACKER_LOG_LEVEL": s.log_level,  # the children log to files in <data_dir>/logs
    }


class _Watch:
    """Polls the running worker for the figures the live view shows."""

    def __init__(self, s: Settings, journeys: tuple[Journey, ...]) -> None:
        self.settings = s
        self.journeys = journeys
        self.db = s.clickhouse_database

    def query(self, sql: str) -> QueryResult:
        return run_query(self.settings, sql, timeout=30)

    def figures(self) -> dict[str, report.JourneyFigures]:
        return report.counts(self.query(report.results_sql(self.db)), self.journeys)

    def recent(self) -> list[tuple[object, ...]]:
        return list(self.query(report.recent_dropoffs_sql(self.db)).rows)


def run_demo(
    settings: Settings,
    *,
    duration: float = 60.0,
    rate: float = 40.0,
    seed: int = 1,
    scenario: str = "mix",
    out: TextIO = sys.stdout,
) -> DemoOutcome:
    s = demo_settings(settings)
    shutil.rmtree(s.data_dir, ignore_errors=True)
    journeys = load(s.journeys_file)
    stack = Stack(s, env=child_env(s), log_dir=s.data_dir / "logs")
    tty = out.isatty()
    view = LiveView(out, tty=tty)
    print(f"Starting Kafka, the worker and the collector in {s.data_dir} ...", file=out, flush=True)
    try:
        stack.start(collector_port=0, worker_port=0)
        urls = {c.name: c.url for c in stack.children}
        wait_for_partitions(urls["worker"], stack.check)
        watch = _Watch(s, journeys)
        began = time.monotonic()
        last = [0.0, 0]

        async def progress(p: Progress) -> None:
            figures, recent = await asyncio.to_thread(lambda: (watch.figures(), watch.recent()))
            now = time.monotonic()
            rate_now = (p.sent - last[1]) / max(now - last[0], 1e-3) if last[0] else 0.0
            last[:] = [now, p.sent]
            view.show(
                Snapshot(
                    "sending", now - began, duration, p.customers, p.sent, rate_now, figures, recent
                )
            )

        sim = asyncio.run(
            simulate(
                urls["collector"],
                "demo",
                journeys,
                scenario=scenario,
                rate=rate,
                duration=duration,
                seed=seed,
                truth_file=s.data_dir / "truth.json",
                on_progress=progress,
            )
        )
        settled = _settle(watch, urls, sim, view, began, duration, stack)
        outcome = _report(watch, sim, journeys, s, settled, out)
    finally:
        stack.stop()
    _tell_where(s, outcome, out)
    return outcome


def _settle(
    watch: _Watch,
    urls: dict[str, str],
    sim: SimulationResult,
    view: LiveView,
    began: float,
    duration: float,
    stack: Stack,
) -> bool:
    def poll(rows: list[tuple[object, ...]]) -> None:
        stack.check()
        figures = report.counts(QueryResult(["j", "k", "s", "n"], rows), watch.journeys)
        view.show(
            Snapshot(
                "settling",
                time.monotonic() - began,
                duration,
                sim.customers,
                sim.stats.accepted,
                0.0,
                figures,
                watch.recent(),
            )
        )

    return wait_settled(
        lambda: watch.query(report.results_sql(watch.db)).rows,
        urls["collector"],
        urls["worker"],
        sim,
        on_poll=poll,
        timeout=SETTLE_TIMEOUT_S,
    )


def _report(
    watch: _Watch,
    sim: SimulationResult,
    journeys: tuple[Journey, ...],
    s: Settings,
    settled: bool,
    out: TextIO,
) -> DemoOutcome:
    figures = report.build(watch.query, watch.db, journeys)
    checked, mismatches = report.compare(figures, sim.truth.funnel())
    drops = sorted(
        (str(j), str(c), str(st), tuple(p), tuple(lv))
        for j, c, st, p, lv in watch.query(report.dropoffs_sql(watch.db)).rows
    )
    checked += 1
    if drops != sorted(sim.truth.dropoff_list):
        missing = set(sim.truth.dropoff_list) - set(drops)
        extra = set(drops) - set(sim.truth.dropoff_list)
        mismatches.append(f"drop-offs by customer: {len(missing)} missing, {len(extra)} unexpected")
    if not settled:
        mismatches.append(f"results were still changing after {SETTLE_TIMEOUT_S:.0f}s")
    stats, truth = sim.stats, sim.truth
    notes = [
        f"{sim.customers} simulated customers sent {stats.accepted} messages "
        f"({truth.unique_messages} unique ids, the rest resent as SDKs do) in {sim.seconds:.0f} s; "
        f"{stats.retries} retries.",
        "Counts are compared exactly; the median time to convert within "
        f"{report.CONVERT_TOLERANCE_MS} ms (event times carry each request's latency).",
    ]
    html = s.data_dir / "report.html"
    html.write_text(
        report.render_html(
            figures,
            title="Touchpoint Tracker demo report",
            checked=checked,
            mismatches=mismatches,
            notes=notes,
        )
    )
    print("\n" + report.render_text(figures), file=out)
    for note in notes:
        print(note, file=out)
    if mismatches:
        print(
            f"MISMATCH: {len(mismatches)} of {checked} figures differ from the ground truth:",
            file=out,
        )
        for m in mismatches:
            print(f"  - {m}", file=out)
    else:
        print(f"MATCH: all {checked} figures agree with the ground truth.", file=out)
    return DemoOutcome(not mismatches, checked, mismatches, html, s.data_dir)


def _tell_where(s: Settings, outcome: DemoOutcome, out: TextIO) -> None:
    env = f"TRACKER_DATA_DIR={s.data_dir}"
    print(
        f"\nReport page: {outcome.html}\n"
        f"Data: {s.data_dir} (Kafka log, ClickHouse warehouse, truth.json, logs/)\n"
        "Query it:\n"
        f'  {env} .venv/bin/tracker query "SELECT journey, kind, stage, count() '
        'FROM tracker.journey_results GROUP BY ALL ORDER BY ALL"\n'
        f'  {env} .venv/bin/tracker query "SELECT journey, stage, customer, pain '
        "FROM tracker.journey_results WHERE kind = 'dropoff' LIMIT 20\"\n"
        f'  {env} .venv/bin/tracker query "SELECT event, channel, count() '
        'FROM tracker.touchpoints GROUP BY ALL ORDER BY 3 DESC"',
        file=out,
        flush=True,
    )
