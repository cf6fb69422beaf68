"""Versioned, idempotent schema migrations, applied at start by every process that writes.

Each migration is a list of statements that are safe to run twice (``IF NOT EXISTS``, inserts into
tables that collapse duplicates); the applied version is recorded in ``schema_migrations``. The
same statements run on chdb and on a single ClickHouse server. With ``clickhouse_cluster`` set,
every table becomes a ``Replicated*MergeTree`` table ``<name>_local`` on each node plus a
``Distributed`` table with the public name, all created ``ON CLUSTER``; materialized views then
read and write the local tables, so each shard aggregates what was inserted into it.

docs/warehouse.md explains the tables, their keys and the analyst queries that read them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from tracker.settings import Settings
from tracker.warehouse.client import Warehouse
from tracker.warehouse.ingest import ingest_ddl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """Where and how the tables are created: database, cluster (or none) and retention."""

    database: str
    cluster: str = ""
    ttl_days: int = 0  # raw touchpoints and result details; 0 keeps them forever
    aggregate_ttl_days: int = 0  # hourly funnel aggregates; 0 keeps them forever

    @classmethod
    def from_settings(cls, settings: Settings) -> Layout:
        return cls(
            settings.clickhouse_database,
            settings.clickhouse_cluster,
            settings.clickhouse_ttl_days,
            settings.clickhouse_aggregate_ttl_days,
        )

    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER {self.cluster}" if self.cluster else ""


@dataclass(frozen=True)
class Table:
    """A MergeTree-family table; rendered as one table, or local + Distributed on a cluster."""

    name: str
    columns: str
    engine: str  # e.g. "ReplacingMergeTree(version, is_deleted)"
    order_by: str
    partition_by: str = ""
    ttl_column: str = ""  # a DateTime expression; the row expires ttl days after it
    aggregate: bool = False  # retention from aggregate_ttl_days instead of ttl_days
    shard_key: str = "rand()"  # which shard a Distributed insert sends a row to

    @property
    def column_types(self) -> dict[str, str]:
        """Each column's type by name, as declared (without ``DEFAULT`` clauses)."""
        declared = (line.strip().rstrip(",").split(None, 1) for line in self.columns.splitlines())
        return {name: rest.split(" DEFAULT ")[0].strip() for name, rest in declared}

    def ddl(self, layout: Layout) -> list[str]:
        db, cluster = layout.database, layout.cluster
        local = f"{self.name}_local" if cluster else self.name
        engine = self.engine
        if cluster:
            family, _, args = engine.partition("(")
            path = f"'/clickhouse/tables/{{shard}}/{db}/{local}', '{{replica}}'"
            args = args.rstrip(")")
            engine = f"Replicated{family}({path}{', ' + args if args else ''})"
        elif "(" not in engine:
            engine += "()"
        days = layout.aggregate_ttl_days if self.aggregate else layout.ttl_days
        clauses = [f"ENGINE = {engine}"]
        if self.partition_by:
            clauses.append(f"PARTITION BY {self.partition_by}")
        clauses.append(f"ORDER BY ({self.order_by})")
        if self.ttl_column and days > 0:
            clauses.append(f"TTL {self.ttl_column} + INTERVAL {days} DAY")
        out = [
            f"CREATE TABLE IF NOT EXISTS {db}.{local}{layout.on_cluster} (\n{self.columns}\n)\n"
            + "\n".join(clauses)
        ]
        if cluster:
            out.append(
                f"CREATE TABLE IF NOT EXISTS {db}.{self.name}{layout.on_cluster} "
                f"AS {db}.{local} "
                f"ENGINE = Distributed({cluster}, {db}, {local}, {self.shard_key})"
            )
        return out


def materialized_view(layout: Layout, name: str, target: str, source: str, select: str) -> str:
    """An insert trigger from ``source`` into ``target``; local tables on a cluster."""
    suffix = "_local" if layout.cluster else ""
    db = layout.database
    body = select.format(source=f"{db}.{source}{suffix}")
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{name}{layout.on_cluster} "
        f"TO {db}.{target}{suffix} AS\n{body}"
    )


def view(layout: Layout, name: str, select: str) -> str:
    body = select.format(db=layout.database)
    return f"CREATE VIEW IF NOT EXISTS {layout.database}.{name}{layout.on_cluster} AS\n{body}"


# Raw touchpoints, one row per message id. At-least-once delivery can write a message twice:
# ReplacingMergeTree keeps one row per sorting key, and the sorting key is made of fields a
# sender fixes when it creates the message (its own clock's time and its id), so retries
# collapse. The columns are named as Segment's and RudderStack's warehouses name them:
# `timestamp` is when it happened, corrected for the device's clock skew; `original_timestamp`
# is the device's own time, which keys, partitions and expires the rows.
TOUCHPOINTS = Table(
    "touchpoints",
    """    message_id      String,
    type            LowCardinality(String),
    event           LowCardinality(String),
    anonymous_id    String,
    user_id         String,
    previous_id     String,
    group_id        String,
    channel         LowCardinality(String),
    source          LowCardinality(String),
    timestamp       DateTime64(3, 'UTC'),
    original_timestamp DateTime64(3, 'UTC'),
    sent_at         DateTime64(3, 'UTC'),
    received_at     DateTime64(3, 'UTC'),
    properties      String,
    traits          String,
    context         String,
    kafka_partition UInt32,
    kafka_offset    UInt64,
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)""",
    "ReplacingMergeTree(inserted_at)",
    "toDate(original_timestamp), message_id",
    partition_by="toYYYYMM(original_timestamp)",
    ttl_column="toDateTime(original_timestamp)",
    shard_key="cityHash64(message_id)",
)

# The first shape (migration 1): `timestamp` was the device's time and `event_time` the corrected
# one. Migration 7 copies such a table into the shape above.
_TOUCHPOINTS_V1 = replace(
    TOUCHPOINTS,
    columns=TOUCHPOINTS.columns.replace(
        "    timestamp       DateTime64(3, 'UTC'),\n    original_timestamp DateTime64(3, 'UTC'),\n"
        "    sent_at         DateTime64(3, 'UTC'),\n    received_at     DateTime64(3, 'UTC'),\n",
        "    timestamp       DateTime64(3, 'UTC'),\n    sent_at         DateTime64(3, 'UTC'),\n"
        "    received_at     DateTime64(3, 'UTC'),\n    event_time      DateTime64(3, 'UTC'),\n",
    ),
    order_by="toDate(timestamp), message_id",
    partition_by="toYYYYMM(timestamp)",
    ttl_column="toDateTime(timestamp)",
)
# Its columns, and where each comes from in it, for the copy.
_V1_TO_V7 = {
    **{c: c for c in ("message_id", "type", "event", "anonymous_id", "user_id", "previous_id",
                      "group_id", "channel", "source", "sent_at", "received_at", "properties",
                      "traits", "context", "kafka_partition", "kafka_offset", "inserted_at")},
    "timestamp": "event_time",
    "original_timestamp": "timestamp",
}  # fmt: skip

_RESULT_FIELDS = """    journey         LowCardinality(String),
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
    version         UInt64"""

# The journey engine's current results, one row per result key. A result that is withdrawn is
# written again with is_deleted = 1 and a higher version; FINAL keeps the newest version and drops
# deleted keys, so count() FINAL is right at any moment, also after workers re-process input.
# Sharded by customer: every version of a result lands on the same shard.


def _results_table(name: str, last_column: str, engine: str, order_by: str) -> Table:
    """A table of result rows: partitioned, expired and sharded by their journey instance."""
    return Table(
        name,
        f"{_RESULT_FIELDS},\n    {last_column},\n"
        "    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)",
        engine,
        order_by,
        partition_by="toYYYYMM(instance_start)",
        ttl_column="toDateTime(instance_start)",
        shard_key="cityHash64(customer)",
    )


JOURNEY_RESULTS = _results_table(
    "journey_results",
    "is_deleted      UInt8",
    "ReplacingMergeTree(version, is_deleted)",
    "journey, kind, customer, instance, level",
)

# Every change the engine emitted, signed: +1 for a result, -1 for its withdrawal (carrying the
# withdrawn values, so it lands in the same groups as the row it cancels). A version is one
# recomputation of one customer, so (result key, version, sign) names one change; a worker that
# writes it again after a crash writes the same key, and FINAL collapses the copies. sum(sign)
# over FINAL is therefore right at any moment. Rows of an instance expire together (TTL on the
# instance's start), so sums stay balanced when old data goes.
RESULT_CHANGES = _results_table(
    "journey_result_changes",
    "sign            Int8",
    "ReplacingMergeTree",
    "journey, kind, customer, instance, level, version, sign",
)

# Identity links (anonymousId/previousId -> userId) as they arrive in touchpoints, one row per
# pair: repeated and re-delivered messages collapse; the newest link time is kept.
IDENTITY_LINKS = Table(
    "identity_links",
    """    from_id         String,
    user_id         String,
    via             LowCardinality(String),
    linked_at       DateTime64(3, 'UTC'),
    message_id      String,
    channel         LowCardinality(String),
    source          LowCardinality(String)""",
    "ReplacingMergeTree(linked_at)",
    "from_id, user_id",
    shard_key="cityHash64(from_id)",
)

# identify: anonymousId -> userId; alias: previousId -> userId; any message carrying both an
# anonymousId and a userId links them too (the rules of docs/journeys.md).
_LINKS_SELECT = """SELECT from_id, user_id, type AS via, timestamp AS linked_at, message_id,
    channel, source
FROM {source}
ARRAY JOIN arrayDistinct(arrayFilter(x -> x != '' AND x != user_id,
    [anonymous_id, if(type = 'alias', previous_id, '')])) AS from_id
WHERE user_id != ''"""
# The same over the first shape of touchpoints (migration 3).
_LINKS_SELECT_V1 = _LINKS_SELECT.replace("timestamp AS linked_at", "event_time AS linked_at")

# Hourly funnel counts per journey, result kind, stage and channel, by the hour the journey
# instance started (a cohort: later corrections land in the hour of the instance they correct).
# Each count is a set of changes, not a sum of inserts: `added` holds the keys of +1 changes,
# `withdrawn` those of -1 changes. A duplicate delivery adds a key already in the set, so it
# counts once; a correction adds to `withdrawn` in the same group as the result it cancels.
# The count is uniqExactMerge(added) - uniqExactMerge(withdrawn), exact at any moment.
FUNNEL = Table(
    "journey_funnel",
    """    hour            DateTime('UTC'),
    journey         LowCardinality(String),
    kind            LowCardinality(String),
    level           UInt8,
    stage           LowCardinality(String),
    channel         LowCardinality(String),
    added           AggregateFunction(uniqExact, String, String, UInt64),
    withdrawn       AggregateFunction(uniqExact, String, String, UInt64)""",
    "AggregatingMergeTree",
    "journey, hour, kind, level, stage, channel",
    partition_by="toYYYYMM(hour)",
    ttl_column="hour",
    aggregate=True,
    shard_key="cityHash64(journey)",
)

_FUNNEL_SELECT = """SELECT toStartOfHour(instance_start) AS hour, journey, kind, level, stage,
    channel,
    uniqExactStateIf(customer, instance, version, sign > 0) AS added,
    uniqExactStateIf(customer, instance, version, sign < 0) AS withdrawn
FROM {source}
GROUP BY hour, journey, kind, level, stage, channel"""

# Views over the current results (journey_results FINAL): what analysts query by name.
# Moves from one stage to the next: entering stage 1 is no move, so its row (which the window
# needs for the move to stage 2) is left out.
_STAGE_TRANSITIONS = """SELECT * FROM (
SELECT journey, customer, instance, instance_start,
    lagInFrame(stage) OVER w AS from_stage, stage AS to_stage, level,
    lagInFrame(at) OVER w AS left_at, at AS entered_at,
    dateDiff('millisecond', left_at, entered_at) / 1000 AS seconds, channel, message_id
FROM {db}.journey_results FINAL
WHERE kind = 'stage'
WINDOW w AS (PARTITION BY journey, customer, instance ORDER BY level
             ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
) WHERE level > 1"""

_DROPOFFS = """SELECT d.journey AS journey, d.customer AS customer, d.instance AS instance,
    d.instance_start AS instance_start, d.stage AS stage, d.level AS level,
    d.since AS entered_at, d.at AS deadline, d.duration_ms / 1000 AS seconds_at_stage,
    d.expired AS expired, d.last_event AS last_event, d.channel AS last_channel,
    d.pain AS pain, d.love AS love, r.customer != '' AS recovered, r.at AS recovered_at
FROM (SELECT * FROM {db}.journey_results FINAL WHERE kind = 'dropoff') AS d
LEFT JOIN (SELECT journey, customer, instance, level, at FROM {db}.journey_results FINAL
           WHERE kind = 'recovery') AS r
    ON d.journey = r.journey AND d.customer = r.customer AND d.instance = r.instance
       AND d.level = r.level"""

_RECOVERIES = """SELECT journey, customer, instance, instance_start, stage, level,
    since AS dropped_at, at AS recovered_at, duration_ms / 1000 AS seconds_away
FROM {db}.journey_results FINAL
WHERE kind = 'recovery'"""

_CONVERSIONS = """SELECT journey, customer, instance, since AS started_at, at AS converted_at,
    duration_ms / 1000 AS seconds_to_convert, channel
FROM {db}.journey_results FINAL
WHERE kind = 'conversion'"""

# The newest userId each anonymousId/previousId was linked to (one hop of the identity graph).
_IDENTITY_MAP = """SELECT from_id, argMax(user_id, linked_at) AS current_user_id,
    max(linked_at) AS last_linked_at
FROM {db}.identity_links FINAL
GROUP BY from_id"""


# A migration step: a statement, or a function of the warehouse for one that must look first.
Step = str | Callable[[Warehouse], None]


def migrations(layout: Layout) -> list[tuple[int, str, list[Step]]]:
    """Every migration in order, as steps for ``layout``."""
    db = layout.database
    links_backfill = _LINKS_SELECT_V1.format(source=f"{db}.touchpoints")
    return [
        (1, "touchpoints", list(_TOUCHPOINTS_V1.ddl(layout))),
        (2, "journey_results", JOURNEY_RESULTS.ddl(layout)),
        (
            3,
            "identity_links",
            [
                *IDENTITY_LINKS.ddl(layout),
                materialized_view(
                    layout, "identity_links_mv", "identity_links", "touchpoints", _LINKS_SELECT_V1
                ),
                # Links that arrived before the view existed; a row the view also wrote collapses.
                f"INSERT INTO {db}.identity_links {links_backfill}",
                view(layout, "identity_map", _IDENTITY_MAP),
            ],
        ),
        (4, "journey_result_changes", RESULT_CHANGES.ddl(layout)),
        (
            5,
            "journey_funnel",
            [
                *FUNNEL.ddl(layout),
                materialized_view(
                    layout,
                    "journey_funnel_mv",
                    "journey_funnel",
                    "journey_result_changes",
                    _FUNNEL_SELECT,
                ),
            ],
        ),
        (
            6,
            "result_views",
            [
                view(layout, "stage_transitions", _STAGE_TRANSITIONS),
                view(layout, "dropoffs", _DROPOFFS),
                view(layout, "recoveries", _RECOVERIES),
                view(layout, "conversions", _CONVERSIONS),
            ],
        ),
        (7, "touchpoint_times_as_segment_names_them", _touchpoint_times(layout)),
        (8, "touchpoints_ingest", ingest_ddl(db, layout.on_cluster)),
    ]


def _touchpoint_times(layout: Layout) -> list[Step]:
    """Touchpoints of the first shape to the current one, keeping every row.

    A key column cannot be renamed, so the rows are copied into a table of the new shape, which
    then takes the old one's place. A worker of the previous version may still be writing while
    this runs: rows it wrote during the copy are copied again after the swap (duplicates collapse
    as retries do), and once swapped its writes fail and are retried, never lost. Every step can
    run again after a crash: the copy happens only while the public table has the old shape.
    """
    db, on, suffix = layout.database, layout.on_cluster, "_local" if layout.cluster else ""
    staged = replace(TOUCHPOINTS, name="touchpoints_reshaped")
    names = ", ".join(_V1_TO_V7)
    # Qualified: in ClickHouse an alias shadows the column of the same name (timestamp).
    sources = ", ".join(f"old.{source} AS {name}" for name, source in _V1_TO_V7.items())

    def drop_staged() -> list[str]:
        tables = ["touchpoints_reshaped", *(["touchpoints_reshaped_local"] if suffix else [])]
        return [f"DROP TABLE IF EXISTS {db}.{t}{on} SYNC" for t in tables]

    def copy(warehouse: Warehouse) -> None:
        columns = warehouse.query(
            f"SELECT name FROM system.columns WHERE database = '{db}' "
            f"AND table = 'touchpoints{suffix}'"
        ).rows
        if ("event_time",) not in columns:
            return  # already of the current shape
        run = warehouse.command
        for statement in [*drop_staged(), *staged.ddl(layout)]:
            run(statement)
        (started_ms,) = warehouse.query("SELECT toUnixTimestamp64Milli(now64(3))").rows[0]
        run(f"INSERT INTO {db}.touchpoints_reshaped ({names}) SELECT {sources} "
            f"FROM {db}.touchpoints AS old")  # fmt: skip
        run(f"EXCHANGE TABLES {db}.touchpoints{suffix} AND {db}.touchpoints_reshaped{suffix}{on}")
        old_rows = f"{db}.touchpoints_reshaped"
        if layout.cluster:  # the Distributed table is made again over the exchanged local ones
            run(f"DROP TABLE IF EXISTS {db}.touchpoints{on} SYNC")
            run(TOUCHPOINTS.ddl(layout)[1])
            old_rows = f"cluster('{layout.cluster}', {db}, touchpoints_reshaped_local)"
        # What the previous version wrote meanwhile: the copy's overlap collapses.
        since = f"fromUnixTimestamp64Milli(toInt64({int(started_ms) - 60_000}))"
        run(f"INSERT INTO {db}.touchpoints ({names}) SELECT {sources} FROM {old_rows} AS old "
            f"WHERE old.inserted_at >= {since}")  # fmt: skip

    return [
        # The identity view reads the old column: it is made again below, and what arrived
        # between is backfilled (a link written twice collapses).
        f"DROP VIEW IF EXISTS {db}.identity_links_mv{on}",
        copy,
        *drop_staged(),
        materialized_view(layout, "identity_links_mv", "identity_links", "touchpoints",
                          _LINKS_SELECT),
        f"INSERT INTO {db}.identity_links {_LINKS_SELECT.format(source=f'{db}.touchpoints')}",
    ]  # fmt: skip


def _ledger(layout: Layout) -> list[str]:
    table = Table(
        "schema_migrations",
        "    version UInt32,\n    name String,\n    applied_at DateTime DEFAULT now()",
        "ReplacingMergeTree",
        "version",
    )
    return [
        f"CREATE DATABASE IF NOT EXISTS {layout.database}{layout.on_cluster}",
        *table.ddl(layout),
    ]


def migrate(warehouse: Warehouse, layout: Layout | None = None) -> int:
    """Apply every migration not yet recorded; return the schema version now in force."""
    layout = layout or Layout(warehouse.database)
    db = layout.database
    for statement in _ledger(layout):
        warehouse.command(statement)
    applied = {
        int(v) for (v,) in warehouse.query(f"SELECT version FROM {db}.schema_migrations").rows
    }
    steps = migrations(layout)
    for version, name, statements in steps:
        if version in applied:
            continue
        for step in statements:
            if callable(step):
                step(warehouse)
            else:
                warehouse.command(step)
        warehouse.insert("schema_migrations", [(version, name)], ["version", "name"])
        log.info("event=migration_applied version=%d name=%s", version, name)
    _retention(warehouse, layout)
    return max(v for v, _, _ in steps)


def _retention(warehouse: Warehouse, layout: Layout) -> None:
    """Bring each table's TTL in line with the settings (tables may predate a changed setting)."""
    db = layout.database
    suffix = "_local" if layout.cluster else ""
    current = dict(
        warehouse.query(
            f"SELECT name, create_table_query FROM system.tables WHERE database = '{db}'"
        ).rows
    )
    for table in (TOUCHPOINTS, JOURNEY_RESULTS, RESULT_CHANGES, FUNNEL):
        name = table.name + suffix
        days = layout.aggregate_ttl_days if table.aggregate else layout.ttl_days
        ttl = f"{table.ttl_column} + toIntervalDay({days})"
        has_ttl = " TTL " in current.get(name, "")
        if days > 0 and ttl not in current.get(name, ""):
            change = f"MODIFY TTL {table.ttl_column} + INTERVAL {days} DAY"
        elif days == 0 and has_ttl:
            change = "REMOVE TTL"
        else:
            continue
        warehouse.command(f"ALTER TABLE {db}.{name}{layout.on_cluster} {change}")
        log.info("event=retention_changed table=%s ttl_days=%d", name, days)
