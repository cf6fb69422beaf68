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
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from tracker.core.journeys.codec import kind_of
from tracker.core.journeys.results import DropOff, Recovery, Result, StageEntered
from tracker.errors import WarehouseError
from tracker.metrics import Metrics
from tracker.warehouse.client import Warehouse
from tracker.warehouse.ingest import Encoded
from tracker.warehouse.schema import JOURNEY_RESULTS, RESULT_CHANGES, Table

log = logging.getLogger(__name__)

# The columns of a raw touchpoint, which the worker writes from its records as they are: a
# record's ``event_time_ms`` (the corrected time) is the row's ``timestamp``, its ``timestamp_ms``
# (the device's) the row's ``original_timestamp`` (``tracker.warehouse.ingest``).
TOUCHPOINT_COLUMNS = (
    "message_id", "type", "event", "anonymous_id", "user_id", "previous_id", "group_id",
    "channel", "source", "timestamp", "original_timestamp", "sent_at", "received_at",
    "properties", "traits", "context", "kafka_partition", "kafka_offset",
)  # fmt: skip


RESULT_COLUMNS = (
    "journey", "kind", "customer", "instance", "instance_start", "stage", "level", "at", "since",
    "duration_ms", "expired", "channel", "last_event", "message_id", "pain", "love", "version",
    "is_deleted",
)  # fmt: skip


def result_row(sign: int, r: Result, version: int) -> list[Any]:
    """One ``journey_results`` row; a withdrawn result is the same key with ``is_deleted=1``.

    Times are epoch ms, which the DateTime64(3) columns take as they are.
    """
    start = int(r.instance.split(":", 1)[0])
    stage, level, since, duration, expired, channel, last_event, message_id = (
        "",
        0,
        0,
        0,
        0,
        "",
        "",
        "",
    )
    pain: tuple[str, ...] = ()
    love: tuple[str, ...] = ()
    if isinstance(r, StageEntered):
        stage, level, since, channel, message_id = r.stage, r.level, r.at, r.channel, r.message_id
    elif isinstance(r, DropOff):
        stage, level, since, duration = r.stage, r.level, r.entered_at, r.time_at_stage_ms
        expired, channel, last_event, pain, love = (
            int(r.expired),
            r.last_channel,
            r.last_event,
            r.pain,
            r.love,
        )
    elif isinstance(r, Recovery):
        stage, level, since, duration = r.stage, r.level, r.dropped_at, r.at - r.dropped_at
    else:
        since, duration, channel = r.started_at, r.time_to_convert_ms, r.channel
    return [
        r.journey, kind_of(r), r.customer, r.instance, start, stage, level, r.at, since,
        duration, expired, channel, last_event, message_id, list(pain), list(love), version,
        int(sign < 0),
    ]  # fmt: skip


# journey_result_changes: a result row without is_deleted, with the change's sign instead.
CHANGE_COLUMNS = (*RESULT_COLUMNS[:-1], "sign")


def change_db_row(db_row: list[Any], sign: int) -> list[Any]:
    """A ``journey_result_changes`` row from a ``journey_results`` row and its change's sign."""
    return [*db_row[:-1], sign]


# The result rows of a batch go as one JSONCompact document per table: a header naming each
# column with its type (ClickHouse checks both against the table, so a column renamed or retyped
# is an error, not a value misplaced), then the rows as orjson writes a list of lists. A DateTime64
# column reads a number in JSON as seconds, so times go as ms / 1000: the shortest text of that
# float is the exact decimal "<seconds>.<ms>" for any time of years 1 to 9999 (an ulp there is
# below 0.0001), which the column parses back to the same ms.
RESULT_SETTINGS = {"input_format_skip_unknown_fields": 0, "date_time_input_format": "basic"}
_TIMES = tuple(RESULT_COLUMNS.index(c) for c in ("instance_start", "at", "since"))


def _header(table: Table, columns: tuple[str, ...]) -> bytes:
    types = table.column_types
    meta = [{"name": c, "type": types[c]} for c in columns]
    return orjson.dumps({"meta": meta})[:-1] + b',"data":'


_RESULTS_HEADER = _header(JOURNEY_RESULTS, RESULT_COLUMNS)
_CHANGES_HEADER = _header(RESULT_CHANGES, CHANGE_COLUMNS)


class ResultRows:
    """The result rows of a batch of signed changes: for ``journey_results`` the last row of each
    key and version (a new value for a key supersedes its withdrawal), for
    ``journey_result_changes`` every change (the signed table keeps both).

    :meth:`encode` gives each table one insert, encoded in one ``orjson.dumps`` call (a call per
    row costs several times more) and parsed by ClickHouse outside the interpreter's lock.
    """

    def __init__(self) -> None:
        self.rows: dict[tuple[Any, ...], list[Any]] = {}  # times in seconds
        self.changes: list[list[Any]] = []

    def add(self, changes: Iterable[tuple[int, Result, int]]) -> None:
        start, at, since = _TIMES
        for sign, result, version in changes:
            row = result_row(sign, result, version)
            key = (row[0], row[1], row[2], row[3], row[6], version)
            row[start], row[at], row[since] = row[start] / 1000, row[at] / 1000, row[since] / 1000
            if sign > 0 or key not in self.rows:
                self.rows[key] = row
            self.changes.append(change_db_row(row, sign))

    def encode(self) -> tuple[Encoded, Encoded]:
        """The inserts into ``journey_results`` and ``journey_result_changes``."""
        return (
            _encoded("journey_results", _RESULTS_HEADER, list(self.rows.values())),
            _encoded("journey_result_changes", _CHANGES_HEADER, self.changes),
        )


def _encoded(table: str, header: bytes, rows: list[list[Any]]) -> Encoded:
    body = b"%s%s}" % (header, orjson.dumps(rows)) if rows else b""
    return Encoded(table, body, len(rows), "JSONCompact", RESULT_SETTINGS)


_HEADERS = {"journey_results": _RESULTS_HEADER, "journey_result_changes": _CHANGES_HEADER}


def merge_encoded(parts: Sequence[Encoded]) -> Encoded:
    """One insert of the rows of several :meth:`ResultRows.encode` inserts into the same table,
    in their order, without encoding the rows again: each body is the header, the rows as one
    JSON array, and ``}``."""
    full = [part for part in parts if part.rows]
    if len(full) < 2:
        return full[0] if full else parts[0]
    table = full[0].table
    header = _HEADERS[table]
    if any(part.table != table or not part.body.startswith(header) for part in full):
        raise ValueError(f"not inserts of {table} as ResultRows encodes them")
    rows = b",".join(part.body[len(header) + 1 : -2] for part in full)
    return Encoded(table, b"%s[%s]}" % (header, rows), sum(p.rows for p in full), "JSONCompact",
                   RESULT_SETTINGS)  # fmt: skip


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

    async def write(self, rows: list[list[Any]] | Encoded) -> None:
        """Write ``rows`` (or rows already encoded for this table); on failure retry with capped
        exponential backoff until it succeeds."""
        count = rows.rows if isinstance(rows, Encoded) else len(rows)
        if not count:
            return
        self.metrics.sink_pending_rows.set(count)
        delay = 0.1
        attempt = 0
        while True:
            attempt += 1
            began = time.perf_counter()
            try:
                if isinstance(rows, Encoded):
                    await self.warehouse.araw_insert(rows.table, rows.body, rows.fmt, rows.settings)
                else:
                    await self.warehouse.ainsert(self.table, rows, self.columns)
            except WarehouseError as exc:
                self.metrics.sink_errors.labels(self.table).inc()
                log.warning(
                    "event=sink_write_failed table=%s rows=%d attempt=%d retriable=%s "
                    "retry_in=%.1f error=%s",
                    self.table, count, attempt, exc.retriable, delay, exc,
                )  # fmt: skip
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self.retry_max_seconds)
                continue
            self.metrics.sink_seconds.labels(self.table).observe(time.perf_counter() - began)
            self.metrics.sink_rows.labels(self.table).inc(count)
            self.metrics.sink_batches.labels(self.table).inc()
            self.metrics.sink_pending_rows.set(0)
            return
