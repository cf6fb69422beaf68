"""Raw touchpoints as one pre-encoded insert per batch, without a Python row per touchpoint.

The records of a Kafka message go to ClickHouse as they are, in the message's own JSON text
(serialised again with orjson only where a copy in it is superseded): one JSONEachRow line
``{"kafka_partition": p, "kafka_offset": o, "records": [...]}``
per message, inserted into ``touchpoints_ingest``, a Null table. Its materialized view spreads
each line into ``touchpoints`` rows (``ARRAY JOIN``) and maps the record's names to the table's
(``event_time_ms`` is ``timestamp``, ``timestamp_ms`` is ``original_timestamp``, ...). Nested
``properties``, ``traits`` and ``context`` objects are read as strings, which ClickHouse takes
verbatim from the input: the text orjson wrote, as a row built in Python stores it.

The same insert runs on the embedded engine and on a server (``Client.raw_insert``), and the
parsing happens in ClickHouse, outside the interpreter's lock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import orjson

# Each ``touchpoints`` column and the record field it comes from; times are epoch ms in the
# records. The collector writes every one of these fields (``tracker.core.touchpoint.to_record``).
COLUMN_SOURCES = {
    "message_id": "message_id", "type": "type", "event": "event",
    "anonymous_id": "anonymous_id", "user_id": "user_id", "previous_id": "previous_id",
    "group_id": "group_id", "channel": "channel", "source": "source",
    "timestamp": "event_time_ms", "original_timestamp": "timestamp_ms",
    "sent_at": "sent_at_ms", "received_at": "received_at_ms",
    "properties": "properties", "traits": "traits", "context": "context",
}  # fmt: skip
_REQUIRED = frozenset(COLUMN_SOURCES.values())


def ingest_ddl(database: str, on_cluster: str) -> list[str]:
    """The Null table that takes the lines :meth:`TouchpointBlock.encode` writes, and the view
    that turns them into ``touchpoints`` rows (on a cluster, through the Distributed table, so
    rows are sharded as any other insert's)."""
    fields = ", ".join(
        f"{src} {'Int64' if src.endswith('_ms') else 'String'}" for src in COLUMN_SOURCES.values()
    )
    columns = ", ".join(
        f"fromUnixTimestamp64Milli(r.{src}, 'UTC') AS {name}" if src.endswith("_ms")
        else f"r.{src} AS {name}"
        for name, src in COLUMN_SOURCES.items()
    )  # fmt: skip
    return [
        f"CREATE TABLE IF NOT EXISTS {database}.touchpoints_ingest{on_cluster} (\n"
        f"    kafka_partition UInt32,\n    kafka_offset UInt64,\n"
        f"    records Array(Tuple({fields}))\n) ENGINE = Null",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.touchpoints_ingest_mv{on_cluster} "
        f"TO {database}.touchpoints AS\n"
        f"SELECT {columns}, kafka_partition, kafka_offset\n"
        f"FROM {database}.touchpoints_ingest ARRAY JOIN records AS r",
    ]


# Read per insert: objects into String fields verbatim; record fields the table does not keep
# are skipped, as a row built in Python skips them.
INSERT_SETTINGS = {
    "input_format_json_read_objects_as_strings": 1,
    "input_format_json_ignore_unknown_keys_in_named_tuple": 1,
    "input_format_skip_unknown_fields": 1,
}


@dataclass(frozen=True)
class Encoded:
    """Rows encoded for one insert: ``body`` in ``fmt`` into ``table``, ``rows`` rows."""

    table: str
    body: bytes
    rows: int
    fmt: str = "JSONEachRow"
    settings: Mapping[str, Any] = field(default_factory=lambda: INSERT_SETTINGS)


class TouchpointBlock:
    """The raw rows of a batch of touchpoint messages, one insert for all of them.

    One row per message id: of a message's copies in the batch the last one, as the table keeps
    the copy inserted last (within one insert the choice is not ClickHouse's to make).
    """

    def __init__(self) -> None:
        self._messages: list[tuple[int, int, Sequence[dict[str, Any]], bytes | None]] = []
        self._last: dict[Any, int] = {}  # message id -> index of the message with its last copy
        self._superseded: set[int] = set()  # messages holding a copy that is not the last
        self.records = 0

    def add(
        self,
        records: Sequence[dict[str, Any]],
        partition: int,
        offset: int,
        text: bytes | None = None,
    ) -> None:
        """The records of one message; if one cannot be a row, ``ValueError`` and nothing added.

        ``text``, the message's own JSON array of exactly these records on one line, is sent as
        it is unless a copy in it is superseded: the collector wrote it with orjson, so
        encoding the records again would give the same bytes, at a cost per record.
        """
        ids = [r["message_id"] for r in records
               if _REQUIRED <= r.keys() and type(r["properties"]) is dict
               and type(r["traits"]) is dict and type(r["context"]) is dict]  # fmt: skip
        if len(ids) != len(records):
            raise ValueError(next(_refusal(r) for r in records if _refusal(r)))
        index = len(self._messages)
        for earlier in self._last.keys() & ids:
            self._superseded.add(self._last[earlier])
        if len(set(ids)) != len(ids):
            self._superseded.add(index)
        if text is not None and b"\n" in text:
            text = None  # one line per message
        self._messages.append((partition, offset, records, text))
        self._last.update(zip(ids, repeat(index)))
        self.records += len(records)

    def encode(self) -> Encoded:
        lines = []
        for index, (partition, offset, records, text) in enumerate(self._messages):
            if index in self._superseded:
                text = orjson.dumps(self._last_copies(index, records))
            elif text is None:
                text = orjson.dumps(records)
            lines.append(b'{"kafka_partition":%d,"kafka_offset":%d,"records":%s}\n'
                         % (partition, offset, text))  # fmt: skip
        return Encoded("touchpoints_ingest", b"".join(lines), len(self._last))

    def _last_copies(self, index: int, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Of ``records``, those that are the last copy of their message id in the batch."""
        kept: dict[Any, dict[str, Any]] = {}
        for r in records:
            if self._last[r["message_id"]] == index:
                kept.pop(r["message_id"], None)  # a later copy in this same message wins
                kept[r["message_id"]] = r
        return list(kept.values())


def _refusal(record: dict[str, Any]) -> str:
    """Why ``record`` cannot be a touchpoints row, or "" if it can."""
    missing = sorted(_REQUIRED - record.keys())
    if missing:
        return f"record {record.get('message_id')!r} lacks {', '.join(missing)}"
    for name in ("properties", "traits", "context"):
        if type(record[name]) is not dict:
            return f"record {record['message_id']!r}: {name} is not a JSON object"
    return ""
