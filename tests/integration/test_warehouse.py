"""The analyst side, on data from the real pipeline: collector -> Kafka -> worker -> chdb.

One module-scoped run sends a known set of touchpoints, checks ``tracker funnel`` (through the
running worker) against counts worked out by hand, sends a late identify that merges two devices
and withdraws a drop-off, checks again, then stops the pipeline. The remaining tests read the
warehouse it left: the CLI opening chdb directly, every SQL block of docs/warehouse.md, every panel
of the Grafana dashboard, and duplicate deliveries of every signed change.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.processes import Process, query, settings_env, wait_until
from tests.integration.test_journeys import msg, send
from tracker import readyfile
from tracker.kafka.broker import EmbeddedKafka
from tracker.metrics import Metrics
from tracker.settings import REPO_ROOT, Settings
from tracker.warehouse import dashboard
from tracker.warehouse.client import Warehouse
from tracker.warehouse.queries import QUERIES, render
from tracker.warehouse.schema import Layout, migrate, migrations
from tracker.warehouse.sink import CHANGE_COLUMNS, TOUCHPOINT_COLUMNS, TableSink

pytestmark = pytest.mark.integration

JOURNEYS = """
journeys:
  - name: shop
    window: 1h
    stages:
      - {name: browse, match: {event: Product Viewed}, timeout: 15s}
      - {name: cart, match: {event: Product Added}, timeout: 2m}
      - {name: checkout, match: {event: Checkout Started}, timeout: 1h}
      - {name: purchase, match: {event: Order Completed}}
    pain:
      - {name: slow_page, match: {event: Page Loaded, where: {load_ms: {gt: 3000}}}}
      - {name: error_shown, match: {event: Error Shown}}
    love:
      - {name: coupon_used, match: {event: Coupon Applied}}
"""

# Counted by hand from the touchpoints sent below: (stage, entered, dropped off, recovered).
# a: browse, cart, checkout, purchase (converts). b: browse, a slow page, drops off at browse.
# c: browse, cart, an error and a coupon, drops off at cart (2 min timeout). e: browse, cart only
# after 30 s (drop-off at browse, then a recovery), checkout (1 h timeout: still open).
# Device d1 browses and drops off at browse; device d2 adds to cart with no browse (opens nothing).
BEFORE = [("browse", 5, 3, 1), ("cart", 3, 1, 0), ("checkout", 2, 0, 0), ("purchase", 1, 0, 0)]
# Both devices identify as user ud: browse on d1 then cart on d2 10 s later is one journey, in
# time. d1's browse entry and drop-off are withdrawn; ud enters browse and cart, and drops off at
# cart two minutes later.
AFTER = [("browse", 5, 2, 1), ("cart", 4, 2, 0), ("checkout", 2, 0, 0), ("purchase", 1, 0, 0)]


def expected_funnel(counts: list[tuple[str, int, int, int]]) -> list[dict[str, Any]]:
    first = counts[0][1]
    rows = []
    for level, (stage, entered, dropped, recovered) in enumerate(counts, start=1):
        previous = counts[level - 2][1] if level > 1 else entered
        rows.append({
            "level": level, "stage": stage, "entered": entered, "dropped_off": dropped,
            "recovered": recovered, "rate_from_first": round(entered / first, 4),
            "rate_from_previous": round(entered / previous, 4),
            "dropoff_rate": round(dropped / entered, 4),
        })  # fmt: skip
    return rows


@dataclass
class Run:
    settings: Settings
    ids: dict[str, str]
    t0: int
    funnel_before: list[dict[str, Any]]
    funnel_after: list[dict[str, Any]]
    dropoffs_after: list[dict[str, Any]]
    journey_after: list[dict[str, Any]]


def cli(settings: Settings, bootstrap: str, *args: str) -> list[dict[str, Any]]:
    """``tracker <args> --format json`` as a user runs it; its rows."""
    proc = subprocess.run(
        [sys.executable, "-m", "tracker.cli", *args, "--format", "json"],
        env=settings_env(settings, bootstrap), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def start_worker(settings: Settings, bootstrap: str, workdir: Path) -> Process:
    worker = Process("worker", settings, bootstrap, workdir).wait_ready()
    # What `tracker up` writes, so that the CLI goes through the running worker.
    readyfile.write(settings.run_file, worker=worker.url)
    return worker


def funnel_now(worker: Process, journey: str) -> list[tuple[Any, ...]]:
    sql = render(QUERIES["funnel"], {"db": "tracker", "journey": journey, "since": _epoch()})
    rows = query(worker.url, sql)
    return [(r["stage"], r["entered"], r["dropped_off"], r["recovered"]) for r in rows]


def _epoch() -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def run(kafka: EmbeddedKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("warehouse")
    unique = uuid.uuid4().hex[:10]
    (tmp / "journeys.yaml").write_text(JOURNEYS)
    settings = Settings(
        data_dir=tmp / "data", topic_touchpoints=f"touchpoints-{unique}",
        topic_deadletter=f"deadletter-{unique}", app_id=f"tracker-test-{unique}",
        topic_partitions=4, collector_port=0, worker_port=0, kafka_port=0,
        sink_max_seconds=0.2, timer_interval=0.1, journeys_file=tmp / "journeys.yaml",
    )  # fmt: skip
    journey = "shop"
    ids = {k: f"{unique}-{k}" for k in ("a", "b", "c", "d1", "d2", "ud", "e")}
    worker = start_worker(settings, kafka.bootstrap, tmp)
    collector = Process("collector", settings, kafka.bootstrap, tmp).wait_ready()
    try:
        t0 = int(time.time() * 1000) - 600_000
        a, b, c, d1, d2, e = (ids[k] for k in ("a", "b", "c", "d1", "d2", "e"))
        send(
            collector,
            msg("a1", t0, "Product Viewed", userId=a, channel="web"),
            msg("a2", t0 + 10_000, "Product Added", userId=a, channel="web"),
            msg("a3", t0 + 20_000, "Checkout Started", userId=a, channel="web"),
            msg("a4", t0 + 30_000, "Order Completed", userId=a, channel="web"),
            msg("b1", t0, "Product Viewed", anonymousId=b, channel="app"),
            msg("b2", t0 + 2_000, "Page Loaded", anonymousId=b, channel="app",
                properties={"load_ms": 5200}),
            msg("c1", t0, "Product Viewed", anonymousId=c, channel="web"),
            msg("c2", t0 + 5_000, "Product Added", anonymousId=c, channel="web"),
            msg("c3", t0 + 8_000, "Coupon Applied", anonymousId=c, channel="web"),
            msg("c4", t0 + 10_000, "Error Shown", anonymousId=c, channel="web"),
            msg("d1", t0, "Product Viewed", anonymousId=d1, channel="app"),
            msg("d2", t0 + 10_000, "Product Added", anonymousId=d2, channel="web"),
            msg("e1", t0, "Product Viewed", anonymousId=e, channel="email"),
            msg("e2", t0 + 30_000, "Product Added", anonymousId=e, channel="web"),
            msg("e3", t0 + 40_000, "Checkout Started", anonymousId=e, channel="web"),
        )  # fmt: skip
        wait_until(lambda: funnel_now(worker, journey) == BEFORE, timeout=60,
                   what="the funnel before the identify")  # fmt: skip
        before = cli(settings, kafka.bootstrap, "funnel", "--journey", journey, "--since", "24h")
        send(
            collector,
            msg("d3", t0 + 20_000, type="identify", anonymousId=d1, userId=ids["ud"],
                channel="app"),
            msg("d4", t0 + 21_000, type="identify", anonymousId=d2, userId=ids["ud"],
                channel="web"),
        )  # fmt: skip
        wait_until(lambda: funnel_now(worker, journey) == AFTER, timeout=60,
                   what="the funnel after the late identify")  # fmt: skip
        after = cli(settings, kafka.bootstrap, "funnel", "--journey", journey, "--since", "24h")
        dropoffs = cli(settings, kafka.bootstrap, "dropoffs", "--journey", journey)
        timeline = cli(settings, kafka.bootstrap, "journey", ids["ud"])
        from_device = cli(settings, kafka.bootstrap, "journey", ids["d2"])
        assert from_device == timeline, "an anonymousId finds its customer's whole timeline"
    finally:
        collector.stop()
        worker.stop()
        settings.run_file.unlink(missing_ok=True)
    yield Run(settings, ids, t0, before, after, dropoffs, timeline)


def test_funnel_equals_the_hand_count_before_and_after_a_late_identify(run: Run) -> None:
    assert run.funnel_before == expected_funnel(BEFORE)
    assert run.funnel_after == expected_funnel(AFTER)


def test_dropoffs_carry_the_pain_and_love_signals_seen_at_the_stage(run: Run) -> None:
    by_stage = {r["stage"]: r for r in run.dropoffs_after}
    assert set(by_stage) == {"browse", "cart"}
    browse, cart = by_stage["browse"], by_stage["cart"]
    assert (browse["dropoffs"], browse["recovered"]) == (2, 1)
    assert browse["top_pain"] == "slow_page (1)"
    assert (cart["dropoffs"], cart["recovered"]) == (2, 0)
    assert cart["top_pain"] == "error_shown (1)"
    assert cart["top_love"] == "coupon_used (1)"


def test_journey_shows_both_devices_and_the_merged_results(run: Run) -> None:
    ud = run.ids["ud"]
    touchpoints = [(r["detail"], r["channel"]) for r in run.journey_after
                   if r["what"] == "touchpoint"]  # fmt: skip
    assert touchpoints == [
        ("Product Viewed", "app"), ("Product Added", "web"), ("identify", "app"),
        ("identify", "web"),
    ]  # fmt: skip
    results = [(r["what"], r["detail"], r["id"]) for r in run.journey_after
               if r["what"] != "touchpoint"]  # fmt: skip
    assert results == [
        ("result: stage", "shop / browse", ud),
        ("result: stage", "shop / cart", ud),
        ("result: dropoff", "shop / cart", ud),
    ]


def test_cli_opens_chdb_directly_when_no_worker_runs(run: Run, kafka: EmbeddedKafka) -> None:
    rows = cli(run.settings, kafka.bootstrap, "funnel", "--journey", "shop")
    assert rows == expected_funnel(AFTER)
    assert cli(run.settings, kafka.bootstrap, "funnel", "--journey", "nope") == []


@pytest.fixture
def warehouse(run: Run) -> Iterator[Warehouse]:
    # Closed after each test: chdb serves one data directory per process at a time.
    wh = Warehouse.from_settings(run.settings)
    yield wh
    wh.close()


def test_stage_transitions_are_moves_between_stages(warehouse: Warehouse) -> None:
    rows = warehouse.query(
        "SELECT from_stage, to_stage, level, seconds FROM tracker.stage_transitions"
    ).rows
    assert rows, "the run moved customers between stages"
    for from_stage, to_stage, level, seconds in rows:
        assert level > 1 and from_stage and from_stage != to_stage
        assert 0 <= seconds < 3600


def _values(run: Run) -> dict[str, Any]:
    since = datetime.fromtimestamp(run.t0 / 1000 - 3600, UTC)
    return {"db": "tracker", "journey": "shop", "since": since, "customer": run.ids["ud"]}


SQL_BLOCK = re.compile(r"```sql\n(.*?)```", re.S)


def test_every_sql_block_in_the_docs_is_a_query_of_the_module_and_returns_rows(
    run: Run, warehouse: Warehouse
) -> None:
    blocks = SQL_BLOCK.findall((REPO_ROOT / "docs" / "warehouse.md").read_text())
    by_text = {q.sql.strip(): q for q in QUERIES.values()}
    documented = [by_text.get(block.strip()) for block in blocks]
    assert None not in documented, "a SQL block in docs/warehouse.md is not in queries.py"
    assert {q.name for q in documented if q} == set(QUERIES)
    for q in documented:
        assert q is not None
        result = warehouse.query(render(q, _values(run)))
        assert result.rows, f"{q.name} returned no rows"


def test_the_dashboard_file_is_built_from_the_queries_and_every_panel_returns_rows(
    run: Run, warehouse: Warehouse
) -> None:
    path = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "analyst.json"
    board = json.loads(path.read_text())
    assert board == dashboard.build(), "regenerate: python -m tracker.warehouse.dashboard"
    since = int(run.t0 / 1000) - 3600
    macros = {
        "$__fromTime": f"toDateTime({since})",
        "${journey}": "shop",
        "${customer}": run.ids["ud"],
    }
    sqls = [t["rawSql"] for p in board["panels"] for t in p["targets"]]
    sqls += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    assert len(sqls) == len(QUERIES) + 1
    for sql in sqls:
        for macro, value in macros.items():
            sql = sql.replace(macro, value)
        assert "$" not in sql, sql
        assert warehouse.query(sql).rows, f"no rows for panel query:\n{sql}"
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "grafana-clickhouse-datasource", "uid": "clickhouse"}


async def test_signed_changes_sum_to_the_current_results_also_after_duplicate_deliveries(
    run: Run, warehouse: Warehouse
) -> None:
    """Writing every change again (a worker re-processing after a crash) changes no count."""
    net = (
        "SELECT kind, stage, sum(sign) AS n FROM tracker.journey_result_changes "
        "WHERE journey = 'shop' GROUP BY kind, stage HAVING n != 0 ORDER BY kind, stage"
    )
    current = (
        "SELECT kind, stage, toInt64(count()) AS n FROM tracker.journey_results "
        "WHERE journey = 'shop' GROUP BY kind, stage ORDER BY kind, stage"
    )
    aggregate = (
        "SELECT kind, stage, channel, "
        "toInt64(uniqExactMerge(added)) - toInt64(uniqExactMerge(withdrawn)) AS n "
        "FROM tracker.journey_funnel WHERE journey = 'shop' GROUP BY kind, stage, channel "
        "HAVING n != 0 ORDER BY kind, stage, channel"
    )
    by_channel = (
        "SELECT kind, stage, channel, toInt64(count()) AS n FROM tracker.journey_results "
        "WHERE journey = 'shop' GROUP BY kind, stage, channel ORDER BY kind, stage, channel"
    )
    funnel = render(QUERIES["funnel"], _values(run))
    before = (warehouse.query(net).rows, warehouse.query(funnel).rows)
    assert before[0] == warehouse.query(current).rows
    assert warehouse.query(aggregate).rows == warehouse.query(by_channel).rows
    assert ("dropoff", "cart", 2) in before[0]
    cols = ", ".join(c for c in CHANGE_COLUMNS)
    changes = warehouse.query(f"SELECT {cols} FROM tracker.journey_result_changes").rows
    assert any(row[-1] == -1 for row in changes), "the identify withdrew results"
    sink = TableSink(
        warehouse, Metrics(_registry()), table="journey_result_changes",
        columns=CHANGE_COLUMNS, retry_max_seconds=1.0,
    )  # fmt: skip
    await sink.write([list(row) for row in changes])
    await sink.write([list(row) for row in changes[::2]])
    raw = warehouse.query(
        "SELECT count() FROM tracker.journey_result_changes SETTINGS final = 0"
    ).rows[0][0]
    assert raw > len(changes), "the duplicates were written"
    assert (warehouse.query(net).rows, warehouse.query(funnel).rows) == before
    assert warehouse.query(aggregate).rows == warehouse.query(by_channel).rows


def _registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


def test_migrations_apply_once_follow_the_ttl_settings_and_backfill_links(tmp_path: Path) -> None:
    wh = Warehouse(f"chdb://{tmp_path / 'ch'}", "tracker")
    try:
        # A warehouse from before the identity links: touchpoints (of the first shape, where
        # timestamp was the device's time and event_time the corrected one) hold a link.
        wh.command("CREATE DATABASE IF NOT EXISTS tracker")
        for v, _, group in migrations(Layout("tracker")):
            if v <= 2:
                for statement in group:
                    assert isinstance(statement, str)
                    wh.command(statement)
        device = int(datetime.now(UTC).timestamp() * 1000)  # recent: kept by the 30-day TTL
        corrected = device - 60_000
        v1_columns = [n for n in TOUCHPOINT_COLUMNS if n != "original_timestamp"] + ["event_time"]
        row = dict.fromkeys(v1_columns, "")
        row.update(message_id="m1", type="identify", anonymous_id="anon", user_id="u",
                   channel="web", source="site", timestamp=device, sent_at=device,
                   received_at=device, event_time=corrected, kafka_partition=3,
                   kafka_offset=7, properties='{"a":1}')  # fmt: skip
        wh.insert("touchpoints", [list(row.values())], list(row))

        assert migrate(wh) == len(migrations(Layout("tracker"))) == 8
        moved = wh.query(
            "SELECT message_id, toUnixTimestamp64Milli(timestamp), "
            "toUnixTimestamp64Milli(original_timestamp), properties, kafka_offset "
            "FROM tracker.touchpoints"
        ).rows
        assert moved == [("m1", corrected, device, '{"a":1}', 7)]
        assert migrate(wh, Layout("tracker", ttl_days=30, aggregate_ttl_days=400)) == 8
        tables = dict(wh.query("SELECT name, create_table_query FROM system.tables "
                               "WHERE database = 'tracker'").rows)  # fmt: skip
        assert "TTL toDateTime(original_timestamp) + toIntervalDay(30)" in tables["touchpoints"]
        assert "TTL hour + toIntervalDay(400)" in tables["journey_funnel"]
        assert "touchpoints_reshaped" not in tables
        applied = wh.query("SELECT version FROM tracker.schema_migrations ORDER BY version")
        assert [v for (v,) in applied.rows] == [1, 2, 3, 4, 5, 6, 7, 8]
        migrate(wh)  # back to keeping everything
        tables = dict(wh.query("SELECT name, create_table_query FROM system.tables "
                               "WHERE database = 'tracker'").rows)  # fmt: skip
        assert " TTL " not in tables["touchpoints"] + tables["journey_funnel"]
        links = wh.query(
            "SELECT from_id, user_id, via, toUnixTimestamp64Milli(linked_at) "
            "FROM tracker.identity_links FINAL"
        ).rows
        assert links == [("anon", "u", "identify", corrected)]
        # Migration 7 run again (a crash before it was recorded) changes nothing; the view it
        # made again follows new rows.
        for step in migrations(Layout("tracker"))[6][2]:
            step(wh) if callable(step) else wh.command(step)
        assert wh.query("SELECT count() FROM tracker.touchpoints").rows == [(1,)]
        wh.insert("touchpoints", [["m2", "alias", "", "", "u2", "anon2", "", "web", "site",
                                   corrected, device, device, device, "{}", "{}", "{}", 0, 1]],
                  TOUCHPOINT_COLUMNS)  # fmt: skip
        links = wh.query("SELECT from_id, user_id FROM tracker.identity_links FINAL "
                         "ORDER BY from_id").rows  # fmt: skip
        assert links == [("anon", "u"), ("anon2", "u2")]
        # The cluster variant is valid ClickHouse SQL (parsed here; no cluster runs), also what
        # migration 7 runs on a cluster whose touchpoints have the first shape.
        cluster = Layout("tracker", cluster="prod", ttl_days=30, aggregate_ttl_days=400)
        for _, _, group in migrations(cluster):
            for step in group:
                for statement in [step] if isinstance(step, str) else _statements_of(step):
                    assert wh.query(f"EXPLAIN AST {statement}").rows, statement
    finally:
        wh.close()


def _statements_of(step: Any) -> list[str]:
    """The statements a migration step runs against touchpoints of the first shape (recorded,
    not run: they are for a cluster)."""

    class Recorder:
        def __init__(self) -> None:
            self.statements: list[str] = []

        def query(self, sql: str) -> Any:
            rows = [("event_time",)] if "system.columns" in sql else [(1_767_225_600_000,)]
            return type("Result", (), {"rows": rows})()

        def command(self, sql: str) -> None:
            self.statements.append(sql)

    recorder = Recorder()
    step(recorder)
    assert any(
        s.startswith("EXCHANGE TABLES tracker.touchpoints_local") for s in recorder.statements
    )
    return recorder.statements
