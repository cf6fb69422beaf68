"""Result rows as one encoded insert per table, on the real chdb engine, against Python rows.

The reference is what the worker wrote before: a Python row per change (``result_row``) through
clickhouse-connect's column-wise insert. Both land in their own database of one engine and the
tables (and the funnel view fed by the signed changes) must hold the same rows, byte for byte.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tracker.core.journeys.results import Conversion, DropOff, Recovery, Result, StageEntered
from tracker.metrics import Metrics
from tracker.warehouse.client import Warehouse
from tracker.warehouse.sink import (
    CHANGE_COLUMNS,
    RESULT_COLUMNS,
    ResultRows,
    TableSink,
    change_db_row,
    result_row,
)

pytestmark = pytest.mark.integration

TIMES = ("instance_start", "at", "since")


def _read(columns: tuple[str, ...]) -> str:
    """Every stored column but inserted_at (the insert's own time), times as epoch ms."""
    return ", ".join(f"toUnixTimestamp64Milli({c})" if c in TIMES else c for c in columns)


def python_rows(
    changes: list[tuple[int, Result, int]],
) -> tuple[list[list[Any]], list[list[Any]]]:
    """The rows of a batch as the worker kept them before the encoded insert."""
    rows: dict[tuple[Any, ...], list[Any]] = {}
    signed = []
    for sign, result, version in changes:
        row = result_row(sign, result, version)
        key = (row[0], row[1], row[2], row[3], row[6], version)
        if sign > 0 or key not in rows:
            rows[key] = row
        signed.append(change_db_row(row, sign))
    return list(rows.values()), signed


def sink(warehouse: Warehouse, table: str, columns: tuple[str, ...]) -> TableSink:
    return TableSink(
        warehouse, Metrics(CollectorRegistry()), table=table, columns=columns,
        retry_max_seconds=0.2,
    )  # fmt: skip


Tables = dict[str, list[tuple[Any, ...]]]


async def write_both(
    engine: tuple[Warehouse, Warehouse], batches: list[list[tuple[int, Result, int]]]
) -> tuple[Tables, Tables]:
    """Each batch written both ways; what each database then holds."""
    old, new = engine
    for changes in batches:
        rows, signed = python_rows(changes)
        await sink(old, "journey_results", RESULT_COLUMNS).write(rows)
        await sink(old, "journey_result_changes", CHANGE_COLUMNS).write(signed)
        block = ResultRows()
        block.add(changes)
        results, signed_rows = block.encode()
        assert (results.rows, signed_rows.rows) == (len(rows), len(signed))
        await sink(new, "journey_results", RESULT_COLUMNS).write(results)
        await sink(new, "journey_result_changes", CHANGE_COLUMNS).write(signed_rows)
    reads = {
        "journey_results": f"SELECT {_read(RESULT_COLUMNS)} FROM {{db}}.journey_results "
        "ORDER BY ALL SETTINGS final = 0",
        "journey_result_changes": f"SELECT {_read(CHANGE_COLUMNS)} "
        "FROM {db}.journey_result_changes ORDER BY ALL SETTINGS final = 0",
        "journey_funnel": "SELECT hour, journey, kind, level, stage, channel, "
        "uniqExactMerge(added), uniqExactMerge(withdrawn) FROM {db}.journey_funnel "
        "GROUP BY ALL ORDER BY ALL",
        "dropoffs": "SELECT * FROM {db}.dropoffs ORDER BY ALL",
    }
    return (
        {name: old.query(sql.format(db="by_row")).rows for name, sql in reads.items()},
        {name: new.query(sql.format(db="encoded")).rows for name, sql in reads.items()},
    )


START = 1_764_000_000_123
INSTANCE = f"{START}:m-ü"
ENTERED = StageEntered("checkout ✓", "cust-é-😀", INSTANCE, "Cart \"quoted\" \\ ☕", 2,
                       START + 5_001, "msg-\u2028-1", "web")  # fmt: skip
DROPPED = DropOff("checkout ✓", "cust-é-😀", INSTANCE, "Cart \"quoted\" \\ ☕", 2, START + 5_001,
                  START + 605_001, True, "Page Loaded 🐢", "app",
                  ("slow_page", "error ⚠", "slow_page", ""), ("coupon \"10%\"",))  # fmt: skip
RECOVERED = Recovery("checkout ✓", "cust-é-😀", INSTANCE, "Cart \"quoted\" \\ ☕", 2,
                     START + 605_001, START + 700_999)  # fmt: skip
CONVERTED = Conversion("checkout ✓", "cust-é-😀", INSTANCE, START, START + 800_000, "")
PLAIN = DropOff("signup", "c-2", "0:m-0", "Form", 1, 0, 999, False, "", "", (), ())


async def test_encoded_inserts_store_the_rows_python_rows_store(
    engine: tuple[Warehouse, Warehouse],
) -> None:
    batches = [
        [(1, ENTERED, 1), (1, DROPPED, 1), (1, PLAIN, 1)],
        # The drop-off withdrawn and the recovery added in one version; a value of a key that
        # supersedes its own withdrawal; a conversion with an empty channel.
        [(-1, DROPPED, 2), (1, RECOVERED, 2), (1, CONVERTED, 2), (-1, PLAIN, 2), (1, PLAIN, 2)],
        [(-1, CONVERTED, 3)],
    ]
    by_row, encoded = await write_both(engine, batches)
    assert encoded == by_row
    results = [dict(zip(RESULT_COLUMNS, r, strict=True)) for r in encoded["journey_results"]]
    dropoffs = [r for r in results if r["kind"] == "dropoff" and r["journey"] == "checkout ✓"]
    assert [(r["version"], r["is_deleted"]) for r in dropoffs] == [(1, 0), (2, 1)]
    assert dropoffs[0]["pain"] == ["slow_page", "error ⚠", "slow_page", ""]
    assert dropoffs[0]["love"] == ['coupon "10%"']
    assert (dropoffs[0]["stage"], dropoffs[0]["customer"]) == ('Cart "quoted" \\ ☕', "cust-é-😀")
    assert [dropoffs[0][t] for t in TIMES] == [START, START + 605_001, START + 5_001]
    plain = [(r["version"], r["is_deleted"]) for r in results if r["journey"] == "signup"]
    assert plain == [(1, 0), (2, 0)]  # the new value, not its withdrawal
    signs = sorted((r[16], r[-1], r[1]) for r in encoded["journey_result_changes"])
    assert signs == [(1, 1, "dropoff"), (1, 1, "dropoff"), (1, 1, "stage"), (2, -1, "dropoff"),
                     (2, -1, "dropoff"), (2, 1, "conversion"), (2, 1, "dropoff"),
                     (2, 1, "recovery"), (3, -1, "conversion")]  # fmt: skip
    funnel = {(f[2], f[1]): (f[-2], f[-1]) for f in encoded["journey_funnel"]}
    assert funnel == {  # (results added, withdrawn) by (customer, instance, version)
        ("stage", "checkout ✓"): (1, 0), ("dropoff", "checkout ✓"): (1, 1),
        ("recovery", "checkout ✓"): (1, 0), ("conversion", "checkout ✓"): (1, 1),
        ("dropoff", "signup"): (2, 1),
    }  # fmt: skip
    # The views read what was written: the checkout drop-off was withdrawn (and recovered).
    assert [(d[0], d[-2]) for d in encoded["dropoffs"]] == [("signup", False)]


async def test_times_of_any_year_are_stored_to_the_millisecond(
    engine: tuple[Warehouse, Warehouse],
) -> None:
    rng = random.Random(13)
    edges = [-62_135_596_800_000, 253_402_300_799_999, -2_208_988_800_001, -1, -1_001, 0, 1, 999]
    # Random times in `at` and `since`; instance starts (which partition the tables) at the edges.
    times = [rng.randint(-62_135_596_800_000, 253_402_300_799_999) for _ in range(3000)]
    changes: list[tuple[int, Result, int]] = [
        (1, StageEntered("j", f"c{i}", f"{edges[i % 8]}:m", "s", 1, t, "m", "web"), 1)
        for i, t in enumerate(edges + times)
    ]
    by_row, encoded = await write_both(engine, [changes])
    assert encoded["journey_results"] == by_row["journey_results"]
    assert encoded["journey_result_changes"] == by_row["journey_result_changes"]
    stored = {r[2]: (r[4], r[7], r[8]) for r in encoded["journey_results"]}
    assert stored == {f"c{i}": (edges[i % 8], t, t) for i, t in enumerate(edges + times)}


async def test_an_empty_batch_writes_nothing(engine: tuple[Warehouse, Warehouse]) -> None:
    results, changes = ResultRows().encode()
    assert (results.body, results.rows, changes.body, changes.rows) == (b"", 0, b"", 0)
    _, new = engine
    await sink(new, "journey_results", RESULT_COLUMNS).write(results)
    assert new.query("SELECT count() FROM encoded.journey_results").rows == [(0,)]
