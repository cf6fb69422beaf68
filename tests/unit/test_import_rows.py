from __future__ import annotations

import io

import pytest

from tracker.collector.exports import BadRow, read_csv, read_ndjson, scalar
from tracker.collector.importer import derived_message_id, prepare
from tracker.collector.ingest import Checks
from tracker.errors import ValidationError

LIMIT = 2000
CHECKS = Checks(source="tills", received_at_ms=5, max_message_bytes=LIMIT)
TS = "2026-03-01T10:00:00Z"


def csv_rows(text: bytes) -> list[tuple[int, object]]:
    return list(read_csv(io.BytesIO(text), LIMIT))


@pytest.mark.parametrize(
    ("cell", "value"),
    [("12.50", 12.5), ("-3", -3), ("0", 0), ("true", True), ("FALSE", False), ("00123", "00123"),
     ("+447700900123", "+447700900123"), ("1e5", "1e5"),
     ("12345678901234567890", "12345678901234567890"),
     ("2.5e3", 2500.0), ("n/a", "n/a"), (" 7", " 7")],
)  # fmt: skip
def test_cells_are_parsed_as_the_json_values_they_stand_for(cell: str, value: object) -> None:
    assert scalar(cell) == value
    assert type(scalar(cell)) is type(value)


def test_csv_columns_map_to_message_fields_and_nested_keys() -> None:
    text = (
        "\ufeffevent,userId,timestamp,properties.order.total,properties.store,traits.vip,context.ip\n"
        f'Purchase,c1,{TS},9.99,"Leeds, Briggate",true,\n'
        "\n"
    ).encode()
    assert csv_rows(text) == [
        (2, {"type": "track", "event": "Purchase", "userId": "c1", "timestamp": TS,
             "properties": {"order": {"total": 9.99}, "store": "Leeds, Briggate"},
             "traits": {"vip": True}}),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("header", "word"),
    [(b"event,user_id\n", "'user_id'"), (b"event,event\n", "twice"),
     (b"event,properties.\n", "'properties.'"), (b"properties.a,properties.a.b\n", "nested")],
)  # fmt: skip
def test_a_header_that_cannot_be_mapped_stops_the_import(header: bytes, word: str) -> None:
    with pytest.raises(ValidationError) as info:
        csv_rows(header + b"x,y\n")
    assert info.value.reason == "bad_header"
    assert word in info.value.detail


def test_bad_csv_rows_are_rejected_one_by_one_and_reading_goes_on() -> None:
    text = (
        b"event,userId,timestamp\n"
        b"A,u1\n"  # 2: a field short
        b"B,\xff\xfeu2,T\n"  # 3: not UTF-8
        b"C,u3," + b"x" * 3000 + b"\n"  # 4: longer than the limit
        b'D,"u4\nstill u4",T\n'  # 5-6: a quoted newline is one row
        b'E,"u5"x,T\n'  # 7: stray text after a quote
        b"F,u6,T\n"
    )
    rows = csv_rows(text)
    assert [(n, r.reason if isinstance(r, BadRow) else r["event"]) for n, r in rows] == [
        (2, "bad_csv"), (3, "not_utf8"), (4, "message_too_large"), (5, "D"), (7, "bad_csv"),
        (8, "F"),
    ]  # fmt: skip
    assert rows[3][1]["userId"] == "u4\nstill u4"  # type: ignore[index]


def test_ndjson_lines_are_read_and_bad_ones_named() -> None:
    text = b'{"event": "A"}\n\n  \nnot json\n"text"\n' + b"y" * 5000 + b'\n{"event": "B"}'
    rows = list(read_ndjson(io.BytesIO(text), LIMIT))
    assert [(n, r.reason if isinstance(r, BadRow) else r["event"]) for n, r in rows] == [
        (1, "A"), (4, "invalid_json"), (5, "invalid_message"), (6, "message_too_large"), (7, "B"),
    ]  # fmt: skip


def test_derived_ids_depend_on_source_and_content_only() -> None:
    row = {"type": "track", "event": "Purchase", "userId": "c1", "timestamp": TS}
    same = dict(reversed(list(row.items())))
    assert derived_message_id("tills", row) == derived_message_id("tills", same)
    assert derived_message_id("tills", row) != derived_message_id("web", row)
    assert derived_message_id("tills", row) != derived_message_id("tills", {**row, "userId": "c2"})


def test_prepare_fills_id_and_channel_and_keeps_what_the_row_says() -> None:
    row = {"type": "track", "event": "Purchase", "userId": "c1", "timestamp": TS}
    record = prepare(2, row, CHECKS, "store")
    assert isinstance(record, dict)
    assert record["message_id"] == derived_message_id("tills", row)
    assert (record["channel"], record["source"], record["received_at_ms"]) == ("store", "tills", 5)
    own = prepare(3, {**row, "messageId": "r-1", "channel": "courier"}, CHECKS, "store")
    assert isinstance(own, dict)
    assert (own["message_id"], own["channel"]) == ("r-1", "courier")
    in_props = prepare(4, {**row, "properties": {"channel": "branch"}}, CHECKS, "store")
    assert isinstance(in_props, dict) and in_props["channel"] == "branch"


def test_prepare_rejects_rows_without_timestamp_or_failing_validation() -> None:
    row = {"type": "track", "event": "Purchase", "userId": "c1"}
    assert prepare(2, row, CHECKS, "store") == BadRow(
        2, "missing_timestamp", "an imported touchpoint needs its timestamp"
    )
    bad = prepare(3, {**row, "timestamp": TS, "event": ""}, CHECKS, "store")
    assert isinstance(bad, BadRow) and bad.reason == "invalid_message"
    assert "messageId" not in bad.raw  # the row as it was read, not as it was completed
