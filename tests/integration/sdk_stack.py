"""What the third-party SDK tests share: a collector and a worker on real Kafka and chdb, the
touchpoints every SDK sends, and the check that each arrived in ``tracker.touchpoints`` once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.integration.processes import Process, metric, query, wait_until
from tracker.kafka.broker import EmbeddedKafka
from tracker.settings import Settings

SDK_DIR = Path(__file__).resolve().parents[1] / "sdk"  # package.json and the git-ignored modules
NODE_MODULES = SDK_DIR / "node_modules"


@dataclass
class Stack:
    collector: Process
    worker: Process

    def settled(self) -> None:
        """Wait until the worker has written every touchpoint the collector accepted so far."""
        wait_until(
            lambda: (
                metric(self.collector, "tracker_events_accepted_total")
                == metric(self.worker, "tracker_worker_events_total")
                and metric(self.worker, "tracker_sink_pending_rows") == 0
            ),
            timeout=60,
            what="the worker to catch up with the collector",
        )

    def touchpoints(self, run: str) -> list[dict[str, Any]]:
        """Every stored touchpoint of one test run (its ids all start with ``run``)."""
        sql = f"""SELECT message_id, type, event, anonymous_id, user_id, previous_id, group_id,
            source, properties, traits,
            toUnixTimestamp64Milli(original_timestamp) AS device_ms,
            toUnixTimestamp64Milli(timestamp) AS time_ms,
            toUnixTimestamp64Milli(received_at) AS received_ms
        FROM tracker.touchpoints
        WHERE startsWith(user_id, '{run}') OR startsWith(anonymous_id, '{run}')
        ORDER BY message_id"""
        rows = query(self.worker.url, sql)
        for row in rows:
            row["properties"] = orjson.loads(row["properties"])
            row["traits"] = orjson.loads(row["traits"])
        return rows


@contextmanager
def running_stack(
    kafka: EmbeddedKafka, workdir: Path, unique: str, sources_yaml: str
) -> Iterator[Stack]:
    """A collector (with the given sources file) and a worker of their own topics and data."""
    sources = workdir / "sources.yaml"
    sources.write_text(sources_yaml)
    settings = Settings(
        data_dir=workdir / "data", topic_touchpoints=f"touchpoints-{unique}",
        topic_deadletter=f"deadletter-{unique}", app_id=f"tracker-sdk-{unique}",
        topic_partitions=4, collector_port=0, worker_port=0, kafka_port=0,
        sink_max_seconds=0.2, sources_file=sources,
    )  # fmt: skip
    worker = Process("worker", settings, kafka.bootstrap, workdir).wait_ready()
    try:
        collector = Process("collector", settings, kafka.bootstrap, workdir).wait_ready()
        try:
            yield Stack(collector, worker)
        finally:
            collector.stop()
    finally:
        worker.stop()


def calls(run: str) -> list[dict[str, Any]]:
    """The touchpoints every SDK test sends, as Segment names the fields; ids start with ``run``.

    A visitor looks around anonymously, logs in (identify), is aliased to the customer id, joins
    a company (group), and buys in the app (screen) and on the server (track).
    """
    visitor, customer = f"{run}-visitor", f"{run}-customer"
    return [
        {"type": "page", "anonymousId": visitor, "name": "Pricing",
         "properties": {"plan_shown": "pro"}},
        {"type": "track", "anonymousId": visitor, "event": "Product Viewed",
         "properties": {"sku": "X-1", "price": 12.5}},
        {"type": "identify", "userId": customer, "anonymousId": visitor,
         "traits": {"email": "ada@example.com", "plan": "gold"}},
        {"type": "alias", "userId": customer, "previousId": visitor},
        {"type": "group", "userId": customer, "groupId": f"{run}-org",
         "traits": {"name": "Acme", "employees": 12}},
        {"type": "screen", "userId": customer, "name": "Cart", "properties": {"items": 2}},
        {"type": "track", "userId": customer, "event": "Order Completed",
         "properties": {"total": 99.5, "currency": "EUR"}},
    ]  # fmt: skip


def expected_row(call: dict[str, Any]) -> dict[str, Any]:
    """What a call must become in ``tracker.touchpoints``."""
    return {
        "type": call["type"],
        "event": call.get("event") or call.get("name") or "",
        "anonymous_id": call.get("anonymousId", ""),
        "user_id": call.get("userId", ""),
        "previous_id": call.get("previousId", ""),
        "group_id": call.get("groupId", ""),
    }


def assert_stored_once(
    rows: list[dict[str, Any]], sent: list[dict[str, Any]], *, source: str,
    time_window: tuple[int, int],
) -> None:  # fmt: skip
    """Every sent call is stored exactly once, with its type, ids, event or name, properties,
    traits and an event time (the corrected one) inside ``time_window`` (epoch ms)."""
    key_fields = ("type", "event", "anonymous_id", "user_id", "previous_id", "group_id")
    stored = sorted(({k: r[k] for k in key_fields} for r in rows), key=repr)
    assert stored == sorted((expected_row(c) for c in sent), key=repr)
    assert len({r["message_id"] for r in rows}) == len(rows)
    by_key = {tuple(r[k] for k in key_fields): r for r in rows}
    for call in sent:
        row = by_key[tuple(expected_row(call).values())]
        assert row["source"] == source
        # What the sender gave arrives as it was; SDKs may add fields of their own (url, path).
        given = call.get("properties", {}) if call["type"] not in ("identify", "group") else {}
        assert row["properties"] | given == row["properties"], (call, row["properties"])
        traits = call.get("traits", {}) if call["type"] in ("identify", "group") else {}
        assert row["traits"] | traits == row["traits"], (call, row["traits"])
        low, high = time_window
        assert low <= row["time_ms"] <= high, (call["type"], row["time_ms"], time_window)
