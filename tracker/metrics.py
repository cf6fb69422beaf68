"""Every Prometheus metric of the product, built on an injected registry.

Labels come from bounded sets only (source, type, reason, table, and the journey, stage and
signal names of the journey definitions); never customer ids or URLs.
Durations are in seconds.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 20000)
# Journey durations: seconds to weeks.
_JOURNEY_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400, 30 * 86400)


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
        self.producer_rebuilds = Counter(
            "tracker_collector_producer_rebuilds_total",
            "Kafka producers replaced after a state they cannot leave, by the error seen.",
            ["reason"],
            registry=registry,
        )
        self.preflights_refused = Counter(
            "tracker_collector_preflights_refused_total",
            "CORS preflights refused because no source allows the page's origin.",
            registry=registry,
        )
        self.sdk_reports_dropped = Counter(
            "tracker_collector_sdk_reports_dropped_total",
            "Reports SDKs send about themselves (analytics.js 2.0's /v1/m), answered and dropped.",
            registry=registry,
        )
        # Worker.
        self.events_consumed = Counter(
            "tracker_worker_events_total",
            "Touchpoint records consumed by the worker.",
            registry=registry,
        )
        self.customer_batches = Counter(
            "tracker_worker_customer_batches_total",
            "Customers whose journeys a batch of touchpoints updated, summed over batches.",
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
        # Journeys. A result later withdrawn (late data, an identity merge) is counted again in
        # the *_corrections_total twin with the same labels, so the net count over a window is
        # increase(results) - increase(corrections); the worker creates every label set at 0.
        self.journey_results = Counter(
            "tracker_journey_results_total",
            "Journey results emitted, by kind: stage (entries), dropoff, recovery, conversion, "
            "advance (moved on from the stage to the next).",
            ["journey", "kind", "stage"],
            registry=registry,
        )
        self.journey_corrections = Counter(
            "tracker_journey_corrections_total",
            "Journey results withdrawn because later data changed them.",
            ["journey", "kind", "stage"],
            registry=registry,
        )
        self.journey_signals = Counter(
            "tracker_journey_signals_total",
            "Pain and love signals carried by drop-offs, by the stage dropped at.",
            ["journey", "stage", "kind", "signal"],
            registry=registry,
        )
        self.journey_signal_corrections = Counter(
            "tracker_journey_signal_corrections_total",
            "Signals of drop-offs that were withdrawn.",
            ["journey", "stage", "kind", "signal"],
            registry=registry,
        )
        self.time_to_convert = Histogram(
            "tracker_journey_time_to_convert_seconds",
            "From an instance's first stage to its conversion (event time).",
            ["journey"],
            buckets=_JOURNEY_BUCKETS,
            registry=registry,
        )
        self.time_at_stage = Histogram(
            "tracker_journey_time_at_stage_seconds",
            "How long instances stayed at a stage before moving on (event time).",
            ["journey", "stage"],
            buckets=_JOURNEY_BUCKETS,
            registry=registry,
        )
        self.open_instances = Gauge(
            "tracker_journey_open_instances",
            "Journey instances at a stage now: entered, not moved on, not dropped off.",
            ["journey", "stage"],
            registry=registry,
        )
        self.late_events = Counter(
            "tracker_late_events_total",
            "Touchpoints that arrived later than the allowed lateness; left out of journeys.",
            registry=registry,
        )
        self.journey_states_refused = Counter(
            "tracker_journey_states_refused_total",
            "Customer states not written to the changelog because they exceed Kafka's message "
            "size; the worker keeps the state in memory and logs event=state_refused.",
            registry=registry,
        )
        self.journey_hot_keys = Counter(
            "tracker_journey_hot_keys_total",
            "Customer keys that went over a hard bound (TRACKER_JOURNEY_MAX_LIVE_TOUCHPOINTS, "
            "TRACKER_JOURNEY_MAX_STATE_BYTES): their journeys use their newest touchpoints.",
            registry=registry,
        )
        self.journey_left_out = Counter(
            "tracker_journey_left_out_total",
            "Touchpoints left out of journeys (raw rows stored) because they lay behind a "
            "customer's folded past: forwarded or merged ones (behind_fold), or a hot key's "
            "older ones (hot_key).",
            ["reason"],
            registry=registry,
        )
        self.journey_folded = Counter(
            "tracker_journey_folded_total",
            "Touchpoints folded out of customer states (their results are final).",
            registry=registry,
        )
        self.journey_pasts_dropped = Counter(
            "tracker_journey_pasts_dropped_total",
            "Identity merges where both customers had a folded past: the member's was dropped "
            "(its final results stay under its own key).",
            registry=registry,
        )
        self.journey_state_guard = Counter(
            "tracker_journey_state_guard_total",
            "Customer states folded completely because their stored form was over "
            "TRACKER_JOURNEY_MAX_STATE_BYTES.",
            registry=registry,
        )
        for reason in ("behind_fold", "hot_key"):
            self.journey_left_out.labels(reason)
        self.identity_merges = Counter(
            "tracker_identity_merges_total",
            "Customers folded into another customer by an alias.",
            registry=registry,
        )
        self.identity_shared_devices = Counter(
            "tracker_identity_shared_devices_total",
            "Devices (anonymousIds) found linked to more users than TRACKER_MAX_USERS_PER_DEVICE: "
            "their anonymous touchpoints stay on their own customer.",
            registry=registry,
        )
        self.identity_moved = Counter(
            "tracker_identity_moved_touchpoints_total",
            "Anonymous touchpoints moved to another customer by a device's identity links.",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "tracker_consumer_lag_messages",
            "Messages in a partition this worker owns beyond its committed offset.",
            ["topic", "partition"],
            registry=registry,
        )

        self.assigned_partitions = Gauge(
            "tracker_worker_assigned_partitions",
            "Partitions of the touchpoints topic this worker owns.",
            registry=registry,
        )
