"""Runs one worker process: schema migrations, the Faust app and the worker's HTTP endpoint."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import faust
from prometheus_client import CollectorRegistry, ProcessCollector

from streams.app import create_app
from streams.collection import tune_gc
from streams.web import CRASH_EXIT_CODE, WorkerWeb
from tracker.core.journeys.definition import load as load_journeys
from tracker.core.journeys.definition import parse_duration_ms
from tracker.core.journeys.engine import JourneyEngine
from tracker.errors import ConfigError
from tracker.kafka.client import ensure_topics
from tracker.metrics import Metrics
from tracker.settings import Settings
from tracker.warehouse.client import Warehouse
from tracker.warehouse.schema import Layout, migrate
from tracker.warehouse.sink import RESULT_COLUMNS, TOUCHPOINT_COLUMNS, TableSink

log = logging.getLogger(__name__)


def _preload_insert_path() -> None:
    """clickhouse-connect imports pandas at a process's first insert (1 to 3 s here): the first
    raw rows after a restart would wait for it. Imported while the worker starts instead."""
    from clickhouse_connect.driver import options

    options.pd  # noqa: B018  (the attribute access is the import)


def run(settings: Settings, bootstrap: str, *, port: int, ready_file: Path | None = None) -> None:
    """Block until the worker is stopped (SIGINT/SIGTERM); acked offsets are committed on stop."""
    threading.Thread(target=_preload_insert_path, name="preload", daemon=True).start()
    journeys = load_journeys(settings.journeys_file)
    log.info("event=journeys_loaded file=%s journeys=%s", settings.journeys_file,
             ",".join(j.name for j in journeys))  # fmt: skip
    asyncio.run(
        ensure_topics(settings, bootstrap, [settings.topic_touchpoints, settings.topic_deadletter])
    )
    warehouse = Warehouse.from_settings(settings)
    version = migrate(warehouse, Layout.from_settings(settings))
    log.info("event=schema_ready version=%d dsn_kind=%s", version, _kind(warehouse))
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    metrics = Metrics(registry)
    retry = settings.sink_retry_max_seconds
    sink = TableSink(
        warehouse, metrics, table="touchpoints", columns=TOUCHPOINT_COLUMNS, retry_max_seconds=retry
    )
    results_sink = TableSink(
        warehouse, metrics, table="journey_results", columns=RESULT_COLUMNS, retry_max_seconds=retry
    )
    try:
        lateness_ms = parse_duration_ms(settings.allowed_lateness)
    except ValueError as exc:
        raise ConfigError(f"TRACKER_ALLOWED_LATENESS: {exc}", field="allowed_lateness") from None
    engine = JourneyEngine(
        journeys,
        lateness_ms=lateness_ms,
        max_live_touchpoints=settings.journey_max_live_touchpoints,
        max_state_bytes=settings.journey_max_state_bytes,
    )
    app = create_app(
        settings, bootstrap, sink=sink, results_sink=results_sink, engine=engine, metrics=metrics
    )
    web = WorkerWeb(
        app, warehouse, metrics, host=settings.worker_host, port=port, ready_file=ready_file,
        query_token=settings.query_token.get_secret_value(),
    )  # fmt: skip
    worker = faust.Worker(
        app,
        web,
        loglevel=settings.log_level,
        quiet=True,
        override_logging=False,
    )
    tune_gc()
    try:
        worker.execute_from_commandline()
    except SystemExit:
        # On a crash, mode stops the worker, shuts the loop down and re-raises the crash reason,
        # which it turns into exit code 1: often before WorkerWeb's watch sees the crash.
        reason = worker.crash_reason or app.crash_reason
        if reason is None:
            raise
        log.error("event=worker_crashed reason=%r exit_code=%d", reason, CRASH_EXIT_CODE)
        raise SystemExit(CRASH_EXIT_CODE) from None
    finally:
        warehouse.close()


def _kind(warehouse: Warehouse) -> str:
    return "chdb" if warehouse.embedded else "server"
