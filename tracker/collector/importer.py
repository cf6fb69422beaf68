"""``tracker import``: exports of offline touchpoints into the touchpoints topic.

Every row passes the collector's own validation (:func:`~tracker.collector.ingest.validate_message`)
and is written with the collector's publisher, so an imported touchpoint is indistinguishable from
one sent over HTTP: same record, same Kafka key, acks=all. A row without a ``messageId`` gets one
derived from the source name and the row's content, so importing a file again writes the same ids
and the warehouse and the journey engine, which both keep one touchpoint per id, count it once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import orjson

from tracker.collector.exports import BadRow, Row, read_csv, read_ndjson
from tracker.collector.ingest import Checks, Rejected, validate_message
from tracker.collector.linger import partition_batches
from tracker.collector.publisher import Publisher
from tracker.errors import UnavailableError, ValidationError
from tracker.kafka.client import ensure_topics
from tracker.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_CHANNEL = "offline"
EXIT_REJECTED = 3  # the exit code when some rows were rejected (the others were written)
BATCH_BYTES = 512 * 1024  # one Kafka request's worth; a key's group stays under the broker limit
BATCH_ROWS = 2000
YIELD_ROWS = 200  # rows read between turns of the event loop
KEEP_REJECTS = 1000  # rejected rows kept for the summary; the rejects file gets all of them
FORMATS = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson"}


@dataclass
class ImportResult:
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    rejects: list[BadRow] = field(default_factory=list)  # the first KEEP_REJECTS of them
    seconds: float = 0.0


def derived_message_id(source: str, message: dict[str, Any]) -> str:
    """The same id for the same row of the same source, whenever and however often it is read."""
    content = orjson.dumps(message, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.blake2b(source.encode() + b"\n" + content, digest_size=16).hexdigest()
    return f"imp-{digest}"


def prepare(
    line: int, message: dict[str, Any], checks: Checks, channel: str
) -> dict[str, Any] | BadRow:
    """A row's message to its record: id, channel and timestamp filled in or checked, validated."""
    original, message = message, dict(message)
    if not message.get("messageId"):
        message["messageId"] = derived_message_id(checks.source, message)
    # The warehouse keeps one row per (day of timestamp, id): without its own time a row would
    # take the import's time, and importing it again on another day would count it twice.
    if not message.get("timestamp"):
        return BadRow(line, "missing_timestamp", "an imported touchpoint needs its timestamp")
    properties = message.get("properties")
    if not message.get("channel") and not (
        isinstance(properties, dict) and properties.get("channel")
    ):
        message["channel"] = channel
    result = validate_message(line, message, checks)
    if isinstance(result, Rejected):
        raw = "" if result.message is None else orjson.dumps(original).decode()[:500]
        return BadRow(line, result.reason, result.detail, raw)
    return result


def read_rows(stream: BinaryIO, fmt: str, limit: int) -> Iterator[Row]:
    return read_csv(stream, limit) if fmt == "csv" else read_ndjson(stream, limit)


def file_format(path: Path, given: str | None) -> str:
    if given:
        return given
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        detail = f"cannot tell the format of {path.name}; pass --format csv or ndjson"
        raise ValidationError("unknown_format", detail)
    return fmt


class Progress:
    """Counts on one stderr line, at most once a second."""

    def __init__(self, out: TextIO, every: float = 1.0) -> None:
        self.out = out
        self.every = every
        self.last = time.monotonic()

    def show(self, result: ImportResult, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < self.every:
            return
        self.last = now
        self.out.write(
            f"import: {result.read:,} rows read, {result.accepted:,} accepted, "
            f"{result.rejected:,} rejected\n"
        )
        self.out.flush()


async def import_file(
    settings: Settings,
    bootstrap: str,
    path: Path,
    *,
    source: str,
    fmt: str,
    channel: str = DEFAULT_CHANNEL,
    rejects_out: TextIO | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """Read, validate and publish every row; return once Kafka acknowledged all accepted rows."""
    result = ImportResult()
    progress = progress or Progress(sys.stderr)
    began = time.monotonic()
    checks = Checks(
        source=source,
        received_at_ms=int(time.time() * 1000),
        max_message_bytes=settings.max_message_bytes,
        anonymize_ip=settings.anonymize_ip,
    )
    topic = settings.topic_touchpoints
    await ensure_topics(settings, bootstrap, [topic, settings.topic_deadletter])
    publisher = Publisher(settings, bootstrap)
    await publisher.start(give_up_after=settings.produce_timeout)
    sender = _Sender(publisher, topic, result)
    reject = _rejecter(result, rejects_out)
    batch: list[dict[str, Any]] = []
    size = 0
    try:
        with path.open("rb") as stream:
            for line, row in read_rows(stream, fmt, settings.max_message_bytes):
                result.read += 1
                record = row if isinstance(row, BadRow) else prepare(line, row, checks, channel)
                if isinstance(record, BadRow):
                    reject(record)
                else:
                    batch.append(record)
                    size += len(orjson.dumps(record))
                    if size >= BATCH_BYTES or len(batch) >= BATCH_ROWS:
                        await sender.send(batch)
                        batch, size = [], 0
                if result.read % YIELD_ROWS == 0:
                    await asyncio.sleep(0)  # let the batch in flight and the producer get on
                progress.show(result)
        if batch:
            await sender.send(batch)
        await sender.wait()
    finally:
        sender.cancel()
        await publisher.stop()
    result.seconds = time.monotonic() - began
    progress.show(result, final=True)
    return result


class _Sender:
    """Publishes one batch while the next is read; at most one batch is unacknowledged."""

    def __init__(self, publisher: Publisher, topic: str, result: ImportResult) -> None:
        self.publisher = publisher
        self.topic = topic
        self.result = result
        self.inflight: asyncio.Task[None] | None = None

    async def send(self, records: list[dict[str, Any]]) -> None:
        await self.wait()
        self.inflight = asyncio.create_task(self._publish(records))

    async def wait(self) -> None:
        if self.inflight is not None:
            task, self.inflight = self.inflight, None
            await task

    def cancel(self) -> None:
        if self.inflight is not None:
            self.inflight.cancel()

    async def _publish(self, records: list[dict[str, Any]]) -> None:
        try:
            partitions = await self.publisher.partitions(self.topic)
            await self.publisher.publish_batches(self.topic, partition_batches(records, partitions))
        except UnavailableError as exc:
            raise UnavailableError(
                f"{exc}; {self.result.accepted} rows were written before it, importing the file "
                "again is safe", retry_after=exc.retry_after,
            ) from exc  # fmt: skip
        self.result.accepted += len(records)


def _rejecter(result: ImportResult, out: TextIO | None) -> Callable[[BadRow], None]:
    def reject(row: BadRow) -> None:
        result.rejected += 1
        if len(result.rejects) < KEEP_REJECTS:
            result.rejects.append(row)
        if out is not None:
            entry = {"line": row.line, "reason": row.reason, "detail": row.detail, "row": row.raw}
            out.write(orjson.dumps(entry).decode() + "\n")

    return reject


def summary(result: ImportResult, path: Path, *, show: int = 20) -> str:
    rate = result.read / result.seconds if result.seconds else 0.0
    lines = [
        f"{path}: {result.read:,} rows read, {result.accepted:,} accepted (acknowledged by "
        f"Kafka), {result.rejected:,} rejected in {result.seconds:.1f}s ({rate:,.0f} rows/s)"
    ]
    for row in result.rejects[:show]:
        lines.append(f"  line {row.line}: {row.reason}: {row.detail}")
    if result.rejected > show:
        lines.append(f"  ... and {result.rejected - show:,} more")
    return "\n".join(lines)
