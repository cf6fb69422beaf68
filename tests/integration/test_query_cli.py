"""``tracker query`` output formats, on the embedded engine opened directly."""

from __future__ import annotations

import json

from tracker.querying import render, run_query
from tracker.settings import Settings
from tracker.warehouse.client import QueryResult


def test_query_opens_chdb_when_nothing_runs(settings: Settings) -> None:
    result = run_query(settings, "SELECT number AS n, toString(number * 2) AS s FROM numbers(3)")
    assert result == QueryResult(["n", "s"], [(0, "0"), (1, "2"), (2, "4")])


def test_render_formats() -> None:
    result = QueryResult(["a", "b"], [(1, "x,y"), (22, "z")])
    assert render(result, "csv") == 'a,b\n1,"x,y"\n22,z'
    assert json.loads(render(result, "json")) == [{"a": 1, "b": "x,y"}, {"a": 22, "b": "z"}]
    assert render(result, "table").splitlines() == [
        "a   b  ",
        "--  ---",
        "1   x,y",
        "22  z  ",
        "(2 rows)",
    ]


def test_a_query_without_rows_still_names_its_columns(settings: Settings) -> None:
    result = run_query(settings, "SELECT number AS n, 'x' AS s FROM numbers(3) WHERE n > 5")
    assert result == QueryResult(["n", "s"], [])
    assert render(result, "csv") == "n,s"
    assert render(result, "table").splitlines()[0].split() == ["n", "s"]
