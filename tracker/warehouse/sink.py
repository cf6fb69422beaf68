"""Writes rows to a ClickHouse table in batches, retrying until the write succeeds.

The caller commits Kafka offsets only after :meth:`TableSink.write` returned: a batch that was
not written is never committed. While a write is retried the caller's loop is blocked, so
consumption pauses instead of memory growing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import orjson

from tracker.core.journeys.codec import RESULT_COLUMNS
from tracker.errors import WarehouseError
from tracker.metrics import Metrics
from tracker.warehouse.client import Warehouse

log = logging.getLogger(__name__)

# Times are written as epoch milliseconds: a DateTime64(3) column takes its ticks as integers,
# which spares building a datetime per value on the way in. A record's ``event_time_ms`` (the
# corrected time) is the row's ``timestamp``, its ``timestamp_ms`` (the device's) the row's
# ``original_timestamp``: the records keep their names, so records already in Kafka still fit.
TOUCHPOINT_COLUMNS = (
    "message_id", "type", "event", "anonymous_id", "user_id", "previous_id", "group_id",
    "channel", "source", "timestamp", "original_timestamp", "sent_at", "received_at",
    "properties", "traits", "context", "kafka_partition", "kafka_offset",
)  # fmt: skip


def touchpoint_row(record: dict[str, Any], partition: int, offset: int) -> list[Any]:
    return [
        record["message_id"],
        record["type"],
        record["event"],
        record["anonymous_id"],
        record["user_id"],
        record["previous_id"],
        record["group_id"],
        record["channel"],
        record["source"],
        record["event_time_ms"],
        record["timestamp_ms"],
        record["sent_at_ms"],
        record["received_at_ms"],
        orjson.dumps(record["properties"]).decode(),
        orjson.dumps(record["traits"]).decode(),
        orjson.dumps(record["context"]).decode(),
        partition,
        offset,
    ]


# journey_result_changes: a result row without is_deleted, with the change's sign instead.
CHANGE_COLUMNS = (*RESULT_COLUMNS[:-1], "sign")


def change_db_row(db_row: list[Any], sign: int) -> list[Any]:
    """A ``journey_result_changes`` row from a ``journey_results`` row and its change's sign."""
    return [*db_row[:-1], sign]


class TableSink:
    """Writes batches of rows to one table; see the module docstring for the guarantees."""

    def __init__(
        self,
        warehouse: Warehouse,
        metrics: Metrics,
        *,
        table: str,
        columns: tuple[str, ...],
        retry_max_seconds: float,
    ) -> None:
        self.warehouse = warehouse
        self.metrics = metrics
        self.table = table
        self.columns = columns
        self.retry_max_seconds = retry_max_seconds
        for family in (metrics.sink_rows, metrics.sink_batches, metrics.sink_errors):
            family.labels(table)  # at 0 from the start, so rates and alerts have a series
        metrics.sink_seconds.labels(table)

    def sibling(self, table: str, columns: tuple[str, ...]) -> TableSink:
        """A sink for another table on the same warehouse, with the same retry policy."""
        return TableSink(
            self.warehouse, self.metrics, table=table, columns=columns,
            retry_max_seconds=self.retry_max_seconds,
        )  # fmt: skip

    async def write(self, rows: list[list[Any]]) -> None:
        """Write ``rows``; on failure retry with capped exponential backoff until it succeeds."""
        if not rows:
            return
        self.metrics.sink_pending_rows.set(len(rows))
        delay = 0.1
        attempt = 0
        while True:
            attempt += 1
            began = time.perf_counter()
            try:
                await self.warehouse.ainsert(self.table, rows, self.columns)
            except WarehouseError as exc:
                self.metrics.sink_errors.labels(self.table).inc()
                log.warning(
                    "event=sink_write_failed table=%s rows=%d attempt=%d retriable=%s "
                    "retry_in=%.1f error=%s",
                    self.table, len(rows), attempt, exc.retriable, delay, exc,
                )  # fmt: skip
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self.retry_max_seconds)
                continue
            self.metrics.sink_seconds.labels(self.table).observe(time.perf_counter() - began)
            self.metrics.sink_rows.labels(self.table).inc(len(rows))
            self.metrics.sink_batches.labels(self.table).inc()
            self.metrics.sink_pending_rows.set(0)
            return
