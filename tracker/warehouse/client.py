"""A thin, thread-confined wrapper over clickhouse-connect for chdb and server URLs alike.

clickhouse-connect's clients are synchronous; the async helpers run them on a worker thread, one
statement at a time per connection. Writes and read-only queries use separate connections because
chdb keeps ``readonly`` as session state once a query sets it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from tracker.errors import ConfigError, WarehouseError
from tracker.settings import Settings

# Analyst queries see each touchpoint once: FINAL collapses rows that at-least-once delivery
# wrote twice. readonly=2 forbids writes and DDL but lets the session set query settings.
READ_SETTINGS = {"readonly": 2, "final": 1}


def _require_chdb() -> None:
    try:
        import chdb  # noqa: F401
    except ImportError:
        raise ConfigError(
            "TRACKER_CLICKHOUSE_URL is empty, which means the embedded ClickHouse engine, but chdb "
            "is not installed: pip install 'touchpoint-tracker[embedded]', or set "
            "TRACKER_CLICKHOUSE_URL to a ClickHouse server",
            field="clickhouse_url",
        ) from None


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


class Warehouse:
    def __init__(self, dsn: str, database: str) -> None:
        self.dsn = dsn
        self.database = database
        self._writer: Client | None = None
        self._reader: Client | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Warehouse:
        if settings.embedded_clickhouse:
            _require_chdb()
            (settings.data_dir / "clickhouse").mkdir(parents=True, exist_ok=True)
        return cls(settings.clickhouse_dsn, settings.clickhouse_database)

    @property
    def embedded(self) -> bool:
        return self.dsn.startswith("chdb:")

    def table(self, name: str) -> str:
        return f"{self.database}.{name}"

    # -- synchronous API -----------------------------------------------------------------------

    def command(self, sql: str) -> None:
        with self._lock, _translated():
            self._writer_client().command(sql)

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
        with self._lock, _translated():
            self._writer_client().insert(self.table(table), rows, column_names=list(columns))

    def raw_insert(
        self, table: str, body: bytes, fmt: str, settings: Mapping[str, Any] | None = None
    ) -> None:
        """Insert ``body``, rows already encoded in ClickHouse's format ``fmt``."""
        with self._lock, _translated():
            self._writer_client().raw_insert(
                self.table(table), insert_block=body, fmt=fmt, settings=dict(settings or {})
            )

    def query(self, sql: str) -> QueryResult:
        """A read-only query that sees deduplicated tables; writes are refused."""
        with self._lock, _translated():
            result = self._reader_client().query(sql)
            columns = list(result.column_names)
            if not columns:
                columns = self._columns_of(sql)
            return QueryResult(columns, [tuple(r) for r in result.result_rows])

    def _columns_of(self, sql: str) -> list[str]:
        """The column names of a query that returned no rows (chdb then sends none)."""
        try:
            described = self._reader_client().query(f"DESCRIBE ({sql.strip().rstrip(';')})")
        except ClickHouseError:
            return []  # not a SELECT (SHOW, EXISTS, ...): nothing to name
        return [str(row[0]) for row in described.result_rows]

    def close(self) -> None:
        with self._lock:
            for client in (self._writer, self._reader):
                if client is not None:
                    client.close()
            self._writer = self._reader = None

    # -- async helpers -------------------------------------------------------------------------

    async def acommand(self, sql: str) -> None:
        await asyncio.to_thread(self.command, sql)

    async def ainsert(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]
    ) -> None:
        await asyncio.to_thread(self.insert, table, rows, columns)

    async def araw_insert(
        self, table: str, body: bytes, fmt: str, settings: Mapping[str, Any] | None = None
    ) -> None:
        await asyncio.to_thread(self.raw_insert, table, body, fmt, settings)

    async def aquery(self, sql: str) -> QueryResult:
        return await asyncio.to_thread(self.query, sql)

    # -- internals -----------------------------------------------------------------------------

    def _writer_client(self) -> Client:
        if self._writer is None:
            self._writer = clickhouse_connect.get_client(dsn=self.dsn)
        return self._writer

    def _reader_client(self) -> Client:
        if self._reader is None:
            self._reader = clickhouse_connect.get_client(dsn=self.dsn, settings=READ_SETTINGS)
        return self._reader


class _translated:
    """Turn clickhouse-connect failures into :class:`WarehouseError` with a retriable flag."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            return
        if isinstance(exc, OperationalError):
            raise WarehouseError(str(exc), retriable=True) from exc
        if isinstance(exc, DatabaseError | ClickHouseError):
            raise WarehouseError(str(exc).split("\n")[0], retriable=False) from exc
