"""The encoded insert of a batch's raw touchpoints: what it sends, without an engine.

tests/integration/test_raw_touchpoints.py writes it to chdb against a row per touchpoint.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tracker.warehouse.ingest import COLUMN_SOURCES, TouchpointBlock


def record(message_id: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(COLUMN_SOURCES.values(), "")
    base.update(event_time_ms=2, timestamp_ms=1, sent_at_ms=0, received_at_ms=3)
    base.update(properties={}, traits={}, context={}, message_id=message_id)
    base.update(fields)
    return base


def lines(block: TouchpointBlock) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in block.encode().body.splitlines()]


def test_one_line_per_message_with_its_records_as_orjson_writes_them() -> None:
    block = TouchpointBlock()
    first = [record("a", properties={"é": '"\\', "n": [1, 2.5, None]}), record("b")]
    block.add(first, 3, 41)
    block.add([record("c")], 0, 7)
    encoded = block.encode()
    assert (encoded.table, encoded.fmt, encoded.rows) == ("touchpoints_ingest", "JSONEachRow", 3)
    body = encoded.body.split(b"\n")
    assert body[0] == b'{"kafka_partition":3,"kafka_offset":41,"records":%s}' % orjson.dumps(first)
    assert body[1].startswith(b'{"kafka_partition":0,"kafka_offset":7,"records":[{')
    assert body[2:] == [b""]
    assert block.records == 3


def test_only_the_last_copy_of_a_message_id_is_sent() -> None:
    block = TouchpointBlock()
    block.add([record("a", event="1"), record("b"), record("a", event="2")], 1, 10)
    block.add([record("c"), record("b", event="last b")], 2, 20)
    block.add([record("a", event="3"), record("d")], 1, 11)
    block.add([record("c", event="x"), record("c", event="last c")], 1, 12)
    sent = [(line["kafka_offset"], r["message_id"], r["event"])
            for line in lines(block) for r in line["records"]]  # fmt: skip
    assert sent == [(20, "b", "last b"), (11, "a", "3"), (11, "d", ""), (12, "c", "last c")]
    assert (block.records, block.encode().rows) == (9, 4)


def test_a_message_is_sent_as_written_unless_a_copy_in_it_is_superseded() -> None:
    block = TouchpointBlock()
    # Spaces orjson would not write tell the message's own text from records encoded again.
    block.add([record("a"), record("b")], 0, 1, b"[ ]")  # its "b" is superseded below
    block.add([record("c")], 0, 2, b'[ {"c": 1} ]')
    block.add([record("b", event="last")], 0, 3, b'[ {"b": 1} ]')
    block.add([record("d"), record("d", event="twice")], 0, 4, b'[ {"d": 2} ]')
    block.add([record("e")], 0, 5, b'[\n{"e": 1}]')  # not one line: encoded again
    body = block.encode().body.split(b"\n")
    assert body[1] == b'{"kafka_partition":0,"kafka_offset":2,"records":[ {"c": 1} ]}'
    assert body[2] == b'{"kafka_partition":0,"kafka_offset":3,"records":[ {"b": 1} ]}'
    assert [r["message_id"] for r in orjson.loads(body[0])["records"]] == ["a"]
    assert orjson.loads(body[3])["records"] == [record("d", event="twice")]
    assert orjson.loads(body[4])["records"] == [record("e")]
    assert len(body) == 6


@pytest.mark.parametrize("name, value", [("properties", "text"), ("traits", None),
                                         ("context", ["a"])])  # fmt: skip
def test_a_record_that_cannot_be_a_row_is_refused_with_its_message(name: str, value: Any) -> None:
    block = TouchpointBlock()
    block.add([record("kept")], 0, 1)
    with pytest.raises(ValueError, match=f"^record 'bad': {name} is not a JSON object$"):
        block.add([record("fine"), record("bad", **{name: value})], 0, 2)
    short = record("short")
    del short["group_id"], short["sent_at_ms"]
    with pytest.raises(ValueError, match=r"^record 'short' lacks group_id, sent_at_ms$"):
        block.add([record("fine"), short], 0, 3)
    assert [r["message_id"] for line in lines(block) for r in line["records"]] == ["kept"]
    assert block.records == 1


def test_an_empty_batch_encodes_to_nothing() -> None:
    encoded = TouchpointBlock().encode()
    assert (encoded.body, encoded.rows) == (b"", 0)
