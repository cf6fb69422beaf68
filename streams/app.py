"""The Faust app: consumes touchpoint messages and hands them to the ClickHouse sink.

Offsets are acknowledged (and so committed) only after the batch they carried was written.
``noack_take`` gives us the events un-acknowledged; we ack them ourselves after the write.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
import orjson

from tracker.metrics import Metrics
from tracker.settings import Settings
from tracker.warehouse.sink import TouchpointSink, touchpoint_row

log = logging.getLogger(__name__)


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def decode_rows(value: bytes, partition: int, offset: int) -> list[list[Any]]:
    """The rows of one Kafka message: a JSON array of touchpoint records."""
    records = orjson.loads(value)
    if not isinstance(records, list):
        raise ValueError("message value is not a JSON array")
    return [touchpoint_row(record, partition, offset) for record in records]


def create_app(
    settings: Settings, bootstrap: str, *, sink: TouchpointSink, metrics: Metrics
) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=broker_urls(bootstrap),
        store="memory://",
        web_enabled=False,
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        stream_buffer_maxsize=4096,
        producer_acks=-1,
    )
    topic = app.topic(
        settings.topic_touchpoints,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    @app.agent(topic, name="touchpoints-sink")
    async def sink_touchpoints(stream: faust.StreamT[Any]) -> None:
        async for events in stream.noack_take(settings.sink_max_rows, settings.sink_max_seconds):
            rows: list[list[Any]] = []
            for event in events:
                message = event.message
                try:
                    rows.extend(decode_rows(message.value, message.partition, message.offset))
                except (ValueError, KeyError, TypeError) as exc:
                    metrics.undecodable.inc()
                    log.warning(
                        "event=undecodable_message partition=%s offset=%s error=%r",
                        message.partition, message.offset, exc,
                    )  # fmt: skip
            metrics.events_consumed.inc(len(rows))
            await sink.write(rows)
            for event in events:
                await stream.ack(event)

    return app
