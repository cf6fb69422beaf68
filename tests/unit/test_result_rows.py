"""The encoded inserts of a batch's result rows: what they send, without an engine.

tests/integration/test_result_rows.py writes them to chdb against Python rows.
"""

from __future__ import annotations

import orjson
import pytest

from tracker.core.journeys.results import DropOff, StageEntered
from tracker.warehouse.schema import JOURNEY_RESULTS, RESULT_CHANGES
from tracker.warehouse.sink import CHANGE_COLUMNS, RESULT_COLUMNS, ResultRows, merge_encoded

ENTERED = StageEntered("j", "c", "1000:m", "s", 1, 1_764_000_000_123, "m1", "web")
DROPPED = DropOff("j", "c", "1000:m", "s", 1, 1_764_000_000_123, 1_764_000_060_123, False,
                  "e", "web", ("slow",), ())  # fmt: skip


def test_each_table_gets_one_document_of_named_typed_columns_and_its_rows() -> None:
    rows = ResultRows()
    rows.add([(1, ENTERED, 4), (-1, DROPPED, 4), (1, DROPPED, 4), (-1, ENTERED, 5)])
    results, changes = rows.encode()
    assert (results.table, changes.table) == ("journey_results", "journey_result_changes")
    assert (results.fmt, results.rows, changes.rows) == ("JSONCompact", 3, 4)
    for encoded, table, columns in ((results, JOURNEY_RESULTS, RESULT_COLUMNS),
                                    (changes, RESULT_CHANGES, CHANGE_COLUMNS)):  # fmt: skip
        doc = orjson.loads(encoded.body)
        assert doc["meta"] == [{"name": c, "type": table.column_types[c]} for c in columns]
    data = orjson.loads(results.body)["data"]
    # Times in seconds; the drop-off's new value supersedes its withdrawal in the same version.
    assert [(r[1], r[7], r[8], r[-2], r[-1]) for r in data] == [
        ("stage", 1_764_000_000.123, 1_764_000_000.123, 4, 0),
        ("dropoff", 1_764_000_060.123, 1_764_000_000.123, 4, 0),
        ("stage", 1_764_000_000.123, 1_764_000_000.123, 5, 1),
    ]
    assert data[1][14:16] == [["slow"], []]
    signed = orjson.loads(changes.body)["data"]
    assert [(r[1], r[-2], r[-1]) for r in signed] == [
        ("stage", 4, 1), ("dropoff", 4, -1), ("dropoff", 4, 1), ("stage", 5, -1),
    ]  # fmt: skip
    assert b"1764000000.123," in results.body  # the decimal ClickHouse parses to the same ms


def test_a_withdrawal_after_its_new_value_does_not_replace_it() -> None:
    rows = ResultRows()
    rows.add([(1, DROPPED, 2), (-1, DROPPED, 2)])
    results, changes = rows.encode()
    assert [r[-1] for r in orjson.loads(results.body)["data"]] == [0]
    assert changes.rows == 2


def test_an_empty_batch_encodes_to_nothing() -> None:
    results, changes = ResultRows().encode()
    assert (results.body, results.rows, changes.body, changes.rows) == (b"", 0, b"", 0)


def test_inserts_merged_hold_every_row_in_order_as_one_encode_would() -> None:
    first, second, empty = ResultRows(), ResultRows(), ResultRows()
    first.add([(1, ENTERED, 4), (1, DROPPED, 4)])
    second.add([(-1, ENTERED, 5)])
    parts = [first.encode(), empty.encode(), second.encode()]
    both = ResultRows()
    both.add([(1, ENTERED, 4), (1, DROPPED, 4), (-1, ENTERED, 5)])
    for i, expected in enumerate(both.encode()):
        merged = merge_encoded([p[i] for p in parts])
        assert (merged.body, merged.rows) == (expected.body, expected.rows)
        assert (merged.table, merged.fmt, merged.settings) == (
            expected.table, expected.fmt, expected.settings,
        )  # fmt: skip
    assert merge_encoded([empty.encode()[0]]).rows == 0
    assert merge_encoded([first.encode()[0]]) == first.encode()[0]
    with pytest.raises(ValueError, match="not inserts of journey_results"):
        merge_encoded([first.encode()[0], second.encode()[1]])
