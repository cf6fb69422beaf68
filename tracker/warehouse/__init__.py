"""ClickHouse: one code path for the embedded chdb engine and a ClickHouse server."""
