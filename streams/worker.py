"""Runs one worker process: schema migrations, the Faust app and the worker's HTTP endpoint."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import faust
from prometheus_client import CollectorRegistry, ProcessCollector

from streams.app import create_app
from streams.web import WorkerWeb
from tracker.kafka.client import ensure_topics
from tracker.metrics import Metrics
from tracker.settings import Settings
from tracker.warehouse.client import Warehouse
from tracker.warehouse.schema import migrate
from tracker.warehouse.sink import TouchpointSink

log = logging.getLogger(__name__)


def run(settings: Settings, bootstrap: str, *, port: int, ready_file: Path | None = None) -> None:
    """Block until the worker is stopped (SIGINT/SIGTERM); acked offsets are committed on stop."""
    asyncio.run(
        ensure_topics(settings, bootstrap, [settings.topic_touchpoints, settings.topic_deadletter])
    )
    warehouse = Warehouse.from_settings(settings)
    version = migrate(warehouse)
    log.info("event=schema_ready version=%d dsn_kind=%s", version, _kind(warehouse))
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    metrics = Metrics(registry)
    sink = TouchpointSink(warehouse, metrics, retry_max_seconds=settings.sink_retry_max_seconds)
    app = create_app(settings, bootstrap, sink=sink, metrics=metrics)
    web = WorkerWeb(warehouse, metrics, host=settings.worker_host, port=port, ready_file=ready_file)
    worker = faust.Worker(
        app,
        web,
        loglevel=settings.log_level,
        quiet=True,
        override_logging=False,
    )
    try:
        worker.execute_from_commandline()
    finally:
        warehouse.close()


def _kind(warehouse: Warehouse) -> str:
    return "chdb" if warehouse.embedded else "server"
