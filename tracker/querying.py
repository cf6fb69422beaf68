"""``tracker query``: run SQL against the warehouse, through the running pipeline if there is one.

In embedded mode the worker process owns the chdb directory, so a second process must not open it;
the CLI then sends the SQL to the worker's read-only ``/query`` endpoint. With nothing running (or
with a ClickHouse server) it connects directly.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.request
from typing import Any

import orjson

from tracker.errors import TrackerError
from tracker.settings import Settings
from tracker.warehouse.client import QueryResult, Warehouse


class QueryError(TrackerError):
    pass


def run_query(settings: Settings, sql: str, *, timeout: float = 60.0) -> QueryResult:
    url = _running_worker(settings) if settings.embedded_clickhouse else None
    if url is None:
        warehouse = Warehouse.from_settings(settings)
        try:
            return warehouse.query(sql)
        finally:
            warehouse.close()
    request = urllib.request.Request(f"{url}/query", data=sql.encode(), method="POST")
    if token := settings.query_token.get_secret_value():
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = orjson.loads(exc.read()).get("error", str(exc))
        raise QueryError(detail) from None
    return QueryResult(body["columns"], [tuple(row) for row in body["rows"]])


def _running_worker(settings: Settings) -> str | None:
    try:
        run = orjson.loads(settings.run_file.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    url = run.get("worker")
    if not isinstance(url, str):
        return None
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2):
            return url
    except (urllib.error.URLError, OSError):
        return None  # a stale run file from a pipeline that is gone


def render(result: QueryResult, fmt: str) -> str:
    if fmt == "json":
        rows = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
        return json.dumps(rows, default=str, ensure_ascii=False, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows(result.rows)
        return buf.getvalue().rstrip("\n")
    return _table(result)


def _table(result: QueryResult) -> str:
    cells = [[_cell(v) for v in row] for row in result.rows]
    widths = [len(c) for c in result.columns]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join
    out = [line(c.ljust(w) for c, w in zip(result.columns, widths, strict=True))]
    out.append(line("-" * w for w in widths))
    out += [line(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    out.append(f"({len(cells)} row{'s' if len(cells) != 1 else ''})")
    return "\n".join(out)


def _cell(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
