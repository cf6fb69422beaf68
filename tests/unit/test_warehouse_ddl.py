"""The warehouse DDL for one node and for a cluster, and the analyst queries' parameters."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from tracker.warehouse.queries import (
    QUERIES,
    QueryParameterError,
    render,
    render_for_grafana,
)
from tracker.warehouse.schema import Layout, migrations

TABLES = ("touchpoints", "journey_results", "journey_result_changes", "identity_links",
          "journey_funnel")  # fmt: skip
VIEWS = ("identity_map", "stage_transitions", "dropoffs", "recoveries", "conversions")


def statements(layout: Layout) -> list[str]:
    """The SQL statements of every migration (steps that look at the warehouse first left out)."""
    return [s for _, _, group in migrations(layout) for s in group if isinstance(s, str)]


def test_versions_are_unique_and_increasing() -> None:
    versions = [v for v, _, _ in migrations(Layout("tracker"))]
    assert versions == sorted(set(versions)) == list(range(1, len(versions) + 1))


def test_one_node_creates_plain_tables_under_their_public_names() -> None:
    sql = "\n".join(statements(Layout("tracker")))
    assert "ON CLUSTER" not in sql and "Replicated" not in sql and "_local" not in sql
    assert "Distributed" not in sql and " TTL " not in sql
    for name in (*TABLES, *VIEWS):
        assert f"IF NOT EXISTS tracker.{name} " in sql or f"tracker.{name}\n" in sql, name


def test_cluster_mode_is_replicated_local_tables_behind_distributed_ones() -> None:
    layout = Layout("analytics", cluster="prod", ttl_days=90, aggregate_ttl_days=730)
    ddl = statements(layout)
    for statement in ddl:
        if statement.startswith("CREATE"):
            assert " ON CLUSTER prod " in statement, statement
        elif statement.startswith("DROP"):  # migration 7: the view it makes again, staging
            assert statement.endswith((" ON CLUSTER prod", " ON CLUSTER prod SYNC")), statement
        else:
            assert statement.startswith("INSERT INTO analytics.identity_links SELECT")
    for name in TABLES:
        (local,) = [
            s for s in ddl if s.startswith(f"CREATE TABLE IF NOT EXISTS analytics.{name}_local ")
        ]
        engine = re.search(r"ENGINE = (\w+)\('([^']+)', '([^']+)'", local)
        assert engine is not None, local
        assert engine.group(1).startswith("Replicated") and engine.group(1).endswith("MergeTree")
        assert engine.group(2) == f"/clickhouse/tables/{{shard}}/analytics/{name}_local"
        assert engine.group(3) == "{replica}"
        (dist,) = [s for s in ddl if s.startswith(f"CREATE TABLE IF NOT EXISTS analytics.{name} ")]
        assert (
            f"AS analytics.{name}_local ENGINE = Distributed(prod, analytics, {name}_local," in dist
        )
    results = next(s for s in ddl if "journey_results_local ON" in s)
    path = "'/clickhouse/tables/{shard}/analytics/journey_results_local', '{replica}'"
    assert f"ReplicatedReplacingMergeTree({path}, version, is_deleted)" in results
    assert "TTL toDateTime(instance_start) + INTERVAL 90 DAY" in results
    funnel = next(s for s in ddl if "journey_funnel_local ON" in s)
    assert "TTL hour + INTERVAL 730 DAY" in funnel
    # Every copy of a result lands on one shard, where FINAL collapses it.
    assert any("journey_result_changes_local, cityHash64(customer))" in s for s in ddl)
    views = [s for s in ddl if "MATERIALIZED VIEW" in s]
    assert len(views) == 4  # the identity links' one made again by migration 7
    # Raw records go in on any node and out through the Distributed table, sharded by message id.
    (ingest,) = [s for s in views if "touchpoints_ingest_mv" in s]
    assert " TO analytics.touchpoints AS" in ingest
    assert "FROM analytics.touchpoints_ingest ARRAY JOIN" in ingest
    for mv in views:
        if mv is ingest:
            continue
        target = re.search(r" TO (\S+) AS", mv)
        source = re.search(r"FROM (\S+)", mv)
        assert target and source and target.group(1).endswith("_local"), mv
        assert source.group(1).endswith("_local"), mv


def test_render_quotes_values_and_refuses_bad_ones() -> None:
    q = QUERIES["funnel"]
    since = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    sql = render(q, {"db": "tracker", "journey": "it's \\ x", "since": since})
    assert "journey = 'it\\'s \\\\ x'" in sql
    assert f"toDateTime({int(since.timestamp())}, 'UTC')" in sql
    assert "{" not in sql.replace("{shard}", "")
    with pytest.raises(QueryParameterError, match="missing"):
        render(q, {"db": "tracker"})
    with pytest.raises(QueryParameterError, match="identifier"):
        render(q, {"db": "x; DROP", "journey": "j", "since": since})
    with pytest.raises(QueryParameterError, match="datetime"):
        render(q, {"db": "tracker", "journey": "j", "since": "yesterday"})


def test_grafana_form_uses_variables_and_the_range_start() -> None:
    for q in QUERIES.values():
        sql = render_for_grafana(q, "tracker")
        assert not re.search(r"\{\w+:\w+\}", sql), q.name
        if "journey" in q.parameters:
            assert "'${journey}'" in sql
        if "since" in q.parameters:
            assert "$__fromTime" in sql
