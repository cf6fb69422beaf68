"""Every Prometheus metric of the product, built on an injected registry.

Labels come from bounded sets only (source, type, reason, table); never customer ids or URLs.
Durations are in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 20000)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # Collector.
        self.events_received = Counter(
            "tracker_events_received_total",
            "Messages received by the collector.",
            ["source"],
            registry=registry,
        )
        self.events_accepted = Counter(
            "tracker_events_accepted_total",
            "Messages acknowledged by Kafka.",
            ["source", "type"],
            registry=registry,
        )
        self.events_rejected = Counter(
            "tracker_events_rejected_total",
            "Messages or bodies rejected, by reason.",
            ["source", "reason"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "tracker_collector_request_seconds",
            "Collector request latency.",
            ["route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "tracker_collector_batch_messages",
            "Messages per accepted request.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.kafka_unavailable = Counter(
            "tracker_collector_kafka_unavailable_total",
            "Requests answered 503 because Kafka did not acknowledge in time.",
            registry=registry,
        )
        # Worker.
        self.events_consumed = Counter(
            "tracker_worker_events_total",
            "Touchpoint records consumed by the worker.",
            registry=registry,
        )
        self.undecodable = Counter(
            "tracker_worker_undecodable_total",
            "Kafka messages the worker could not decode.",
            registry=registry,
        )
        self.sink_rows = Counter(
            "tracker_sink_rows_total",
            "Rows written to ClickHouse.",
            ["table"],
            registry=registry,
        )
        self.sink_batches = Counter(
            "tracker_sink_batches_total",
            "Batches written to ClickHouse.",
            ["table"],
            registry=registry,
        )
        self.sink_errors = Counter(
            "tracker_sink_errors_total",
            "Failed ClickHouse writes (each retried).",
            ["table"],
            registry=registry,
        )
        self.sink_seconds = Histogram(
            "tracker_sink_write_seconds",
            "Time to write one batch to ClickHouse.",
            ["table"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.sink_pending_rows = Gauge(
            "tracker_sink_pending_rows",
            "Rows waiting to be written.",
            registry=registry,
        )
        # Journeys.
        self.journey_results = Counter(
            "tracker_journey_results_total",
            "Journey results emitted (stage entries, drop-offs, recoveries, conversions).",
            ["journey", "kind", "stage"],
            registry=registry,
        )
        self.journey_corrections = Counter(
            "tracker_journey_corrections_total",
            "Journey results withdrawn because later data changed them.",
            ["journey", "kind"],
            registry=registry,
        )
        self.late_events = Counter(
            "tracker_late_events_total",
            "Touchpoints that arrived later than the allowed lateness; left out of journeys.",
            registry=registry,
        )
        self.identity_merges = Counter(
            "tracker_identity_merges_total",
            "Customers folded into another customer by an identity link.",
            registry=registry,
        )

        self.assigned_partitions = Gauge(
            "tracker_worker_assigned_partitions",
            "Partitions of the touchpoints topic this worker owns.",
            registry=registry,
        )

    def observe_changes(self, changes: Iterable[tuple[int, Any]]) -> None:
        for sign, result in changes:
            kind = type(result).__name__
            if sign > 0:
                stage = getattr(result, "stage", "")
                self.journey_results.labels(result.journey, kind, stage).inc()
            else:
                self.journey_corrections.labels(result.journey, kind).inc()
