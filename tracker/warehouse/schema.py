"""Versioned, idempotent schema migrations, applied at start by every process that writes.

Each migration is a list of statements that are safe to run twice (``IF NOT EXISTS``); the applied
version is recorded in ``schema_migrations``. The same statements run on chdb and on a server.
"""

from __future__ import annotations

import logging

from tracker.warehouse.client import Warehouse

log = logging.getLogger(__name__)

# Raw touchpoints, one row per message id. At-least-once delivery can write a message twice:
# ReplacingMergeTree keeps one row per sorting key, and the sorting key is made of fields a
# sender fixes when it creates the message (its timestamp and id), so retries collapse.
TOUCHPOINTS = """
CREATE TABLE IF NOT EXISTS {db}.touchpoints (
    message_id      String,
    type            LowCardinality(String),
    event           LowCardinality(String),
    anonymous_id    String,
    user_id         String,
    previous_id     String,
    group_id        String,
    channel         LowCardinality(String),
    source          LowCardinality(String),
    timestamp       DateTime64(3, 'UTC'),
    sent_at         DateTime64(3, 'UTC'),
    received_at     DateTime64(3, 'UTC'),
    event_time      DateTime64(3, 'UTC'),
    properties      String,
    traits          String,
    context         String,
    kafka_partition UInt32,
    kafka_offset    UInt64,
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(timestamp)
ORDER BY (toDate(timestamp), message_id)
"""

# The journey engine's current results, one row per result key. A result that is withdrawn is
# written again with is_deleted = 1 and a higher version; FINAL keeps the newest version and drops
# deleted keys, so count() FINAL is right at any moment, also after workers re-process input.
JOURNEY_RESULTS = """
CREATE TABLE IF NOT EXISTS {db}.journey_results (
    journey         LowCardinality(String),
    kind            LowCardinality(String),
    customer        String,
    instance        String,
    instance_start  DateTime64(3, 'UTC'),
    stage           LowCardinality(String),
    level           UInt8,
    at              DateTime64(3, 'UTC'),
    since           DateTime64(3, 'UTC'),
    duration_ms     Int64,
    expired         UInt8,
    channel         LowCardinality(String),
    last_event      String,
    message_id      String,
    pain            Array(LowCardinality(String)),
    love            Array(LowCardinality(String)),
    version         UInt64,
    is_deleted      UInt8,
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(instance_start)
ORDER BY (journey, kind, customer, instance, level)
"""

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "touchpoints", [TOUCHPOINTS]),
    (2, "journey_results", [JOURNEY_RESULTS]),
]


def migrate(warehouse: Warehouse) -> int:
    """Apply every migration not yet recorded; return the schema version now in force."""
    db = warehouse.database
    warehouse.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    warehouse.command(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime DEFAULT now()) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    applied = {
        int(v) for (v,) in warehouse.query(f"SELECT version FROM {db}.schema_migrations").rows
    }
    for version, name, statements in MIGRATIONS:
        if version in applied:
            continue
        for statement in statements:
            warehouse.command(statement.format(db=db))
        warehouse.insert("schema_migrations", [(version, name)], ["version", "name"])
        log.info("event=migration_applied version=%d name=%s", version, name)
    return max(v for v, _, _ in MIGRATIONS)
