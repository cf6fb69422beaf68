"""The Faust app of a worker: its settings, and the journey agents (``streams/journeys.py``)."""

from __future__ import annotations

import gc
import logging
import ssl
import time

import faust

from streams.collection import GC_FULL_SECONDS
from streams.journeys import JourneyAgents
from streams.lag import publish_lags
from streams.offsets import read_uncommitted_from_start
from streams.store import SCHEME
from tracker.core.journeys.engine import JourneyEngine
from tracker.metrics import Metrics
from tracker.settings import Settings
from tracker.warehouse.sink import TableSink

log = logging.getLogger(__name__)

LAG_INTERVAL = 1.0  # seconds between consumer lag updates
PRODUCER_BUFFERED = 10_000  # faust's table writes waiting to be sent (a few hundred bytes each)


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def _credentials(settings: Settings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """SASL and/or TLS for a production cluster, from the same settings the collector uses."""
    ssl_context = (
        ssl.create_default_context() if "SSL" in settings.kafka_security_protocol else None
    )
    if not settings.kafka_sasl_mechanism:
        return faust.SSLCredentials(ssl_context) if ssl_context else None
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=ssl_context,
    )


def create_app(
    settings: Settings,
    bootstrap: str,
    *,
    sink: TableSink,
    results_sink: TableSink,
    engine: JourneyEngine,
    metrics: Metrics,
) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker_credentials=_credentials(settings),
        broker=broker_urls(bootstrap),
        store=f"{SCHEME}://" if settings.worker_store == "rocksdb" else "memory://",
        web_enabled=False,
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # A touchpoints message holds a partition's records of a few ms of requests (up to
        # 256 KiB, see tracker/collector/linger.py): fetch several per partition, buffer fewer.
        consumer_max_fetch_size=4 * 1024 * 1024,
        stream_buffer_maxsize=512,  # messages, per agent
        producer_max_batch_size=512 * 1024,
        producer_acks=-1,
        table_standby_replicas=0,
        broker_session_timeout=settings.worker_session_timeout,
        # The batcher never acks events it received before a rebalance (see streams/batching.py),
        # so waiting for every event to be acked would hang the rebalance for good. Unacked
        # events are not committed either: they are read again.
        stream_wait_empty=False,
        broker_heartbeat_interval=settings.worker_session_timeout / 4,
        # The agents' internal topics are created as the worker starts; a group that formed
        # before the consumer saw one of them leaves it unassigned (no identity agent) until the
        # next metadata refresh notices it and rejoins: refresh often, not every 5 minutes.
        consumer_metadata_max_age_ms=5_000,
    )
    # faust's table writes (the owners table's, on identity merges) wait in the producer's
    # buffer, and above its limit (100) faust holds back every incoming message, touchpoints
    # included, until the buffer drains one send at a time: a burst of merges would stall the
    # whole worker. Still bounded, at a size a burst fits in.
    app.producer.buffer.max_messages = PRODUCER_BUFFERED
    agents = JourneyAgents(
        app, settings, engine, touchpoint_sink=sink, results_sink=results_sink, metrics=metrics
    )
    read_uncommitted_from_start(app.consumer, agents.source_topics)

    @app.timer(GC_FULL_SECONDS)
    async def collect_garbage() -> None:
        began = time.perf_counter()
        found = gc.collect()
        log.debug("event=gc_full objects=%d seconds=%.3f", found, time.perf_counter() - began)

    @app.timer(LAG_INTERVAL)
    async def consumer_lag() -> None:
        if not app.rebalancing:
            publish_lags(metrics, app.consumer)

    return app
