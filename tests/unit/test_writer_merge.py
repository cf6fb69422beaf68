"""Units queued while the writer wrote are written as one: rows, forwards and states of all of
them, in their order, each state's last value once."""

from __future__ import annotations

from typing import Any

from streams.writes import Unit, merged
from tracker.core.journeys.results import StageEntered
from tracker.warehouse.sink import ResultRows


def _unit(
    versions: list[int], forward: list[bytes], states: list[tuple[Any, bytes, bytes]]
) -> Unit:
    rows = ResultRows()
    rows.add([(1, StageEntered("j", "c", "1:m", "s", 1, 1000, "m", "web"), v) for v in versions])
    return Unit(*rows.encode(), [(k, b"{}") for k in forward], states)


async def test_queued_units_are_written_as_one_in_their_order() -> None:
    customers, devices = object(), object()
    first = _unit([1], [b"a", b"b"], [(customers, b"c1", b"v1"), (devices, b"c1", b"d1")])
    second = _unit([], [b"c"], [(customers, b"c2", b"v2")])
    third = _unit([2, 3], [b"a"], [(customers, b"c1", b"v3")])
    one = merged([first, second, third])
    assert (one.rows.rows, one.changes.rows) == (3, 3)
    assert [key for key, _ in one.forward] == [b"a", b"b", b"c", b"a"]
    # A key's later state replaces its earlier one; the same key in another table is its own.
    assert one.states == [(customers, b"c1", b"v3"), (devices, b"c1", b"d1"),
                          (customers, b"c2", b"v2")]  # fmt: skip
    assert merged([second]) is second
