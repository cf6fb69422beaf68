"""Raw touchpoints as one encoded insert, on the real chdb engine, against a row per touchpoint.

The reference is what the worker wrote before: a Python row per record (``touchpoint_row``) through
clickhouse-connect's column-wise insert. Both land in their own database of one engine and the
tables must hold the same rows, byte for byte.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from tracker.metrics import Metrics
from tracker.warehouse.client import Warehouse
from tracker.warehouse.ingest import TouchpointBlock, ingest_ddl
from tracker.warehouse.schema import Layout, migrations
from tracker.warehouse.sink import TOUCHPOINT_COLUMNS, TableSink

pytestmark = pytest.mark.integration

# Every stored column but inserted_at (the insert's own time).
COLUMNS = ", ".join(
    f"toUnixTimestamp64Milli({c})" if c in ("timestamp", "original_timestamp", "sent_at",
                                            "received_at") else c
    for c in TOUCHPOINT_COLUMNS
)  # fmt: skip


def touchpoint_row(record: dict[str, Any], partition: int, offset: int) -> list[Any]:
    """A row per touchpoint, as the worker built it before the encoded insert."""
    return [
        record["message_id"], record["type"], record["event"], record["anonymous_id"],
        record["user_id"], record["previous_id"], record["group_id"], record["channel"],
        record["source"], record["event_time_ms"], record["timestamp_ms"],
        record["sent_at_ms"], record["received_at_ms"],
        orjson.dumps(record["properties"]).decode(), orjson.dumps(record["traits"]).decode(),
        orjson.dumps(record["context"]).decode(), partition, offset,
    ]  # fmt: skip


def python_rows(messages: list[tuple[int, int, list[dict[str, Any]]]]) -> list[list[Any]]:
    """The rows of a batch as the worker kept them before: the last copy of each message id."""
    rows: dict[str, list[Any]] = {}
    for partition, offset, records in messages:
        for r in records:
            rows.pop(r["message_id"], None)
            rows[r["message_id"]] = touchpoint_row(r, partition, offset)
    return list(rows.values())


def record(message_id: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "message_id": message_id, "type": "track", "event": "Product Viewed",
        "anonymous_id": "anon-1", "user_id": "", "previous_id": "", "group_id": "",
        "channel": "web", "source": "site", "timestamp_ms": 1_764_000_000_000,
        "sent_at_ms": 1_764_000_000_050, "received_at_ms": 1_764_000_000_080,
        "event_time_ms": 1_764_000_000_030, "properties": {}, "traits": {}, "context": {},
    }  # fmt: skip
    base.update(fields)
    return base


TRICKY = [
    record("u-1", event="Café ☕ \"quoted\" \\ back", anonymous_id="ünïcødé-😀",
           properties={"name": "Zoë \"Z\" O'Brien", "path": "C:\\temp\\new\n\ttab",
                       "emoji": "😀👍🏽", "ctl": "\u0000\u001f\u2028\u2029", "slash": "a/b",
                       "empty": "", "none": None, "yes": True, "no": False}),
    record("u-2", properties={"nested": {"a": [1, [2, {"b": None}], {"c": "d"}], "e": {}},
                              "list": [], "mixed": [1, "two", 3.5, None, True, {"x": []}]},
           traits={"plan": {"tier": "gold", "since": [2024, 1]}}),
    record("u-3", properties={"big": 18_446_744_073_709_551_615, "neg": -9_223_372_036_854_775_808,
                              "huge": 1.8446744073709552e19, "f": 0.1, "tiny": 1e-7, "e": 1e300,
                              "whole": 2.0, "negz": -0.0, "zero": 0}),
    record("u-4", type="identify", event="", user_id="user-9", traits={"email": "a@b.c",
           "name": "Ann \\\"A\\\"", "age": 41, "vip": True, "tags": ["x", "y"]},
           context={"page": {"path": "/p?q=1&r=2", "title": "<b>Deals</b> & more"},
                    "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0",
                    "locale": "en-GB", "ip": "::1"}),
    record("u-5", type="alias", event="", user_id="user-9", previous_id="anon-1",
           channel="", source="", sent_at_ms=0, context={"library": {"name": "analytics.js"}}),
    record("u-6", group_id="grp-1", properties={"unknown_field_kept": {"k": "v"}}, extra="dropped"),
]  # fmt: skip


def sink(warehouse: Warehouse) -> TableSink:
    return TableSink(
        warehouse, Metrics(CollectorRegistry()), table="touchpoints",
        columns=TOUCHPOINT_COLUMNS, retry_max_seconds=0.2,
    )  # fmt: skip


async def write_both(
    engine: tuple[Warehouse, Warehouse], messages: list[tuple[int, int, list[dict[str, Any]]]]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    old, new = engine
    await sink(old).write(python_rows(messages))
    block = TouchpointBlock()
    for partition, offset, records in messages:
        block.add(records, partition, offset, orjson.dumps(records))  # as the collector wrote it
    await sink(new).write(block.encode())
    read = f"SELECT {COLUMNS} FROM {{db}}.touchpoints ORDER BY message_id SETTINGS final = 0"
    return old.query(read.format(db="by_row")).rows, new.query(read.format(db="encoded")).rows


async def test_encoded_insert_stores_the_rows_a_python_row_stores(
    engine: tuple[Warehouse, Warehouse],
) -> None:
    messages = [(3, 41, TRICKY[:2]), (0, 7, TRICKY[2:5]), (3, 42, TRICKY[5:])]
    by_row, encoded = await write_both(engine, messages)
    assert encoded == by_row
    assert [r[0] for r in encoded] == ["u-1", "u-2", "u-3", "u-4", "u-5", "u-6"]
    first = dict(zip(TOUCHPOINT_COLUMNS, encoded[0], strict=True))
    assert first["event"] == 'Café ☕ "quoted" \\ back'
    assert first["anonymous_id"] == "ünïcødé-😀"
    assert first["properties"] == orjson.dumps(TRICKY[0]["properties"]).decode()
    assert '"ctl":"\\u0000\\u001f\u2028\u2029"' in first["properties"]
    assert (first["timestamp"], first["original_timestamp"]) == (1_764_000_000_030,
                                                                 1_764_000_000_000)  # fmt: skip
    assert (first["kafka_partition"], first["kafka_offset"]) == (3, 41)
    numbers = dict(zip(TOUCHPOINT_COLUMNS, encoded[2], strict=True))["properties"]
    assert '"big":18446744073709551615,"neg":-9223372036854775808' in numbers
    assert orjson.loads(numbers) == TRICKY[2]["properties"]
    assert encoded[4][9:13] == (1_764_000_000_030, 1_764_000_000_000, 0, 1_764_000_000_080)
    # The views over touchpoints see the rows the ingest view writes, as they saw inserted ones.
    links = "SELECT from_id, user_id, via FROM {db}.identity_links FINAL"
    old, new = engine
    linked = new.query(links.format(db="encoded")).rows
    assert linked == old.query(links.format(db="by_row")).rows
    assert [(f, u) for f, u, _ in linked] == [("anon-1", "user-9")]  # one row per id pair


async def test_the_last_copy_of_a_message_id_in_a_batch_is_the_row_kept(
    engine: tuple[Warehouse, Warehouse],
) -> None:
    messages = [
        (1, 10, [record("a", event="first"), record("b"), record("a", event="second")]),
        (2, 20, [record("c"), record("b", properties={"copy": 2})]),
        (1, 11, [record("a", event="third", properties={"n": 3}), record("d")]),
        (1, 12, [record("c", channel="app"), record("c", channel="store")]),
    ]
    by_row, encoded = await write_both(engine, messages)
    assert encoded == by_row
    kept = {r[0]: dict(zip(TOUCHPOINT_COLUMNS, r, strict=True)) for r in encoded}
    assert len(encoded) == len(kept) == 4
    assert (kept["a"]["event"], kept["a"]["properties"], kept["a"]["kafka_offset"]) == (
        "third", '{"n":3}', 11,
    )  # fmt: skip
    assert (kept["b"]["properties"], kept["b"]["kafka_partition"]) == ('{"copy":2}', 2)
    assert (kept["c"]["channel"], kept["c"]["kafka_offset"]) == ("store", 12)
    assert kept["d"]["kafka_offset"] == 11


async def test_an_encoded_write_is_retried_until_the_table_takes_it(tmp_path: Path) -> None:
    warehouse = Warehouse(f"chdb://{tmp_path / 'ch'}", "tracker")
    try:
        warehouse.command("CREATE DATABASE tracker")
        for version, _, steps in migrations(Layout("tracker")):
            if version < 8:  # the ingest table comes later: the first attempts fail
                for step in steps:
                    step(warehouse) if callable(step) else warehouse.command(step)
        block = TouchpointBlock()
        block.add(TRICKY, 0, 5)
        registry = CollectorRegistry()
        the_sink = TableSink(
            warehouse, Metrics(registry), table="touchpoints", columns=TOUCHPOINT_COLUMNS,
            retry_max_seconds=0.2,
        )  # fmt: skip
        write = asyncio.ensure_future(the_sink.write(block.encode()))
        labels = {"table": "touchpoints"}
        async with asyncio.timeout(20):
            while (registry.get_sample_value("tracker_sink_errors_total", labels) or 0) < 2:
                done, _ = await asyncio.wait({write}, timeout=0.05)
                assert not done, "written before its table existed"
        for statement in ingest_ddl("tracker", ""):
            await warehouse.acommand(statement)
        await asyncio.wait_for(write, 20)
        stored = warehouse.query("SELECT message_id FROM tracker.touchpoints ORDER BY message_id")
        assert [m for (m,) in stored.rows] == [r["message_id"] for r in TRICKY]
        assert registry.get_sample_value("tracker_sink_rows_total", labels) == len(TRICKY)
    finally:
        warehouse.close()
