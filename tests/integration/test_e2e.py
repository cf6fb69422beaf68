"""End to end: simulated customers -> real collector -> real Kafka -> worker -> chdb and /metrics.

The settled results in ClickHouse (read with FINAL), the worker's Prometheus counters and the
simulator's ground truth must agree exactly: nothing lost, nothing counted twice, every drop-off
where the truth has one. And ``tracker demo`` says so too, with a report page.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.processes import Process, query
from tracker.core.journeys.definition import load
from tracker.demo import report
from tracker.demo.scrape import scrape, total
from tracker.demo.settle import wait_for_partitions, wait_settled
from tracker.kafka.broker import EmbeddedKafka
from tracker.settings import REPO_ROOT, Settings
from tracker.simulate.run import simulate
from tracker.warehouse.client import QueryResult

pytestmark = pytest.mark.integration

DEMO_JOURNEYS = REPO_ROOT / "deploy" / "journeys.demo.yaml"
KINDS = ("stage", "dropoff", "recovery", "conversion")  # the metrics' kind label


def _rows(worker: str, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) for r in query(worker, sql)]


def test_simulated_customers_end_to_end(
    kafka: EmbeddedKafka, settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"journeys_file": DEMO_JOURNEYS})
    journeys = load(DEMO_JOURNEYS)
    worker = Process("worker", settings, kafka.bootstrap, tmp_path).wait_ready()
    collector = Process("collector", settings, kafka.bootstrap, tmp_path).wait_ready()
    try:

        def alive() -> None:
            for p in (worker, collector):
                assert p.proc.poll() is None, f"{p.command} exited:\n{p.output()}"

        wait_for_partitions(worker.url, alive, timeout=90)
        sim = asyncio.run(
            asyncio.wait_for(
                simulate(collector.url, "e2e", journeys, rate=30, duration=10, seed=5), 120
            )
        )
        truth = sim.truth
        db = settings.clickhouse_database
        settled = wait_settled(
            lambda: _rows(worker.url, report.results_sql(db)),
            collector.url,
            worker.url,
            sim,
            on_poll=lambda _: alive(),
            timeout=120,
        )
        assert settled, "results still changing 120 s after the last deadline"

        # Nothing lost, nothing doubled: one row per message id sent, resends included once.
        (count, distinct), *_ = _rows(
            worker.url,
            f"SELECT count(), uniqExact(message_id) FROM {db}.touchpoints FINAL",
        )
        assert truth.messages > truth.unique_messages  # the run did resend some batches
        assert count == distinct == truth.unique_messages
        assert sim.stats.accepted == truth.messages

        # The worker's own counters: every message consumed and written once per delivery.
        w = scrape(worker.url)
        c = scrape(collector.url)
        assert total(c, "tracker_events_accepted_total") == truth.messages
        assert total(w, "tracker_worker_events_total") == truth.messages
        assert total(w, "tracker_sink_rows_total", table="touchpoints") == truth.messages

        # Journey results (FINAL) against the truth: every funnel figure and every drop-off.
        figures = report.build(lambda sql: QueryResult([], _rows(worker.url, sql)), db, journeys)
        checked, mismatches = report.compare(figures, truth.funnel())
        assert mismatches == [] and checked > 50
        drops = sorted(
            (j, c_, s, tuple(p), tuple(lv))
            for j, c_, s, p, lv in _rows(worker.url, report.dropoffs_sql(db))
        )
        assert drops == sorted(truth.dropoff_list)
        assert any(p for *_, p, _ in drops)  # drop-offs carry the pain met before them
        conversions = sorted(
            (j, c_)
            for j, c_ in _rows(
                worker.url,
                f"SELECT journey, customer FROM {db}.journey_results FINAL "
                "WHERE kind = 'conversion'",
            )
        )
        assert conversions == sorted(truth.conversion_list)
        # Customers stitched across devices and channels: results only under the customer keys.
        customers = {
            c_
            for (c_,) in _rows(
                worker.url, f"SELECT DISTINCT customer FROM {db}.journey_results FINAL"
            )
        }
        assert customers == set(truth.customers)
        assert any(len(ids) >= 3 for ids in truth.customers.values())

        # Prometheus: results emitted minus results withdrawn = the truth, per journey and kind.
        want: Counter[tuple[str, str]] = Counter()
        for (j, _), n in truth.entered.items():
            want[(j, "stage")] += n
        for (j, _), n in truth.dropoffs.items():
            want[(j, "dropoff")] += n
        for (j, _), n in truth.recoveries.items():
            want[(j, "recovery")] += n
        for j, n in truth.conversions.items():
            want[(j, "conversion")] += n
        for journey in journeys:
            for kind in KINDS:
                net = total(
                    w, "tracker_journey_results_total", journey=journey.name, kind=kind
                ) - total(w, "tracker_journey_corrections_total", journey=journey.name, kind=kind)
                assert net == want[(journey.name, kind)], (journey.name, kind)
    finally:
        collector.stop()
        worker.stop()


def test_tracker_demo_reports_a_match_and_writes_the_page(tmp_path: Path, unique: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env.update(TRACKER_DATA_DIR=str(tmp_path / "data"), TRACKER_KAFKA_HEAP="384m")
    out = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "demo", "--duration", "8", "--seed", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "MATCH: all" in out.stdout
    assert "tracker query" in out.stdout
    page = tmp_path / "data" / "demo" / "report.html"
    html = page.read_text()
    assert str(page) in out.stdout
    journeys = load(DEMO_JOURNEYS)
    assert html.count('<div class="funnel"') == len(journeys)
    for journey in journeys:
        assert f"<h2>{journey.name}</h2>" in html
    assert "figures match the ground truth" in html
    assert "http" not in html.split("<body>", 1)[1].replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
