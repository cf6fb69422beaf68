"""The reference tables of docs/settings.md and docs/metrics.md, generated from the code.

``tracker docs settings`` and ``tracker docs metrics`` print them; a test fails when the files in
docs/ differ, and when a setting has no description here, so the pages cannot go stale.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from tracker.metrics import Metrics
from tracker.settings import Settings

# What each setting means, by section, in the order the page shows them. Names, types and
# defaults come from Settings itself.
SETTINGS: dict[str, dict[str, str]] = {
    "General": {
        "data_dir": "embedded broker data, chdb warehouse, run files",
        "log_level": "`debug`, `info`, `warning` or `error`; logs are `key=value` lines on stderr",
    },
    "Kafka": {
        "kafka_bootstrap": "`host:port[,host:port]` of your Kafka cluster; empty: the embedded "
        "broker",
        "kafka_port": "port of the embedded broker (`0` = any free port)",
        "kafka_home": "writable directory the embedded broker's jars are fetched into, once per "
        "pom (Maven, from the packaged `kafka/pom.xml`)",
        "kafka_heap": "Java heap of the embedded broker",
        "kafka_security_protocol": "e.g. `SASL_SSL` or `SSL` for a managed cluster",
        "kafka_sasl_mechanism": "e.g. `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`; empty: no SASL",
        "kafka_sasl_username": "SASL user name",
        "kafka_sasl_password": "SASL password",
        "topic_touchpoints": "topic of accepted touchpoints",
        "topic_deadletter": "rejected messages, with the reason",
        "topic_partitions": "partitions of topics the product creates",
        "topic_replication": "replication factor of topics the product creates",
    },
    "ClickHouse": {
        "clickhouse_url": "e.g. `http://user:pass@clickhouse:8123`; empty: the embedded chdb "
        "engine in `<data_dir>/clickhouse` (needs the `embedded` extra)",
        "clickhouse_database": "database of every table",
        "clickhouse_cluster": "cluster name: tables `ON CLUSTER`, replicated local tables behind "
        "Distributed ones; empty: one node",
        "clickhouse_ttl_days": "days raw touchpoints and results are kept (by the instance's "
        "start); `0` = forever",
        "clickhouse_aggregate_ttl_days": "days the hourly funnel aggregates are kept; `0` = "
        "forever",
    },
    "Collector": {
        "collector_host": "where the collector listens (`0.0.0.0` for every interface)",
        "collector_port": "the collector's port (`0` = any free port)",
        "max_batch_bytes": "largest request body, after decoding",
        "max_message_bytes": "largest message",
        "produce_timeout": "seconds Kafka has to acknowledge a request's messages before the "
        "answer is `503`",
        "collector_linger_ms": "milliseconds the collector waits for concurrent requests so that "
        "their records go to Kafka together, one message per partition; `0` = only those already "
        "waiting",
        "collector_linger_max_bytes": "bytes of records waiting for Kafka's acknowledgement at "
        "most; past it a request waits up to `produce_timeout`, then gets `503`",
        "sources_file": "sources YAML: write keys, browser origins, rate limits; empty: open "
        "development mode",
        "anonymize_ip": "store `context.ip` cut to its network: IPv4 last octet zeroed, IPv6 to "
        "/48",
        "trusted_proxy_hops": "proxies in front of the collector that append to "
        "`X-Forwarded-For`; `0` ignores the header",
        "collector_event_loop": "`uvloop`, or `asyncio` (the standard loop; also used where "
        "uvloop is not installed)",
        "collector_header_timeout": "seconds a request's headers may take from their first byte; "
        "then the connection is closed",
        "collector_body_timeout": "seconds a request's body may take after its headers; then "
        "`408 body_timeout`",
        "collector_keepalive_timeout": "seconds an idle keep-alive connection stays open (longer "
        "than a load balancer's idle timeout)",
        "collector_max_connections": "open connections at most (lowered at start to fit the "
        "open-file limit); at the bound a new client replaces the oldest one waiting for headers",
    },
    "Worker": {
        "app_id": "Faust app id = Kafka consumer group; workers with the same id share partitions",
        "worker_host": "where the worker's `/health`, `/metrics` and `/query` listen",
        "worker_port": "the worker's port (`0` = any free port)",
        "sink_max_rows": "a ClickHouse batch closes at this many Kafka messages (or 16 MiB of "
        "them)...",
        "sink_max_seconds": "...or once its first message has waited this many seconds since it "
        "was written to Kafka (checked every `min(TRACKER_TIMER_INTERVAL, this / 2)` seconds)",
        "sink_retry_max_seconds": "longest wait between retries of a failed ClickHouse write",
        "query_token": "bearer token every caller of the worker's `POST /query` must send; "
        "empty: `/query` answers loopback clients only",
        "worker_session_timeout": "seconds (at least 6) before a crashed worker's partitions move "
        "to another worker",
        "worker_store": "where the worker keeps its tables: `rocksdb` (under `<data_dir>/faust`; a "
        "restart reads only the changelog's tail) or `memory` (a restart reads the whole "
        "changelog)",
    },
    "Journeys": {
        "journeys_file": "journey definitions (rejected at start, with line and field, when "
        "invalid)",
        "allowed_lateness": "touchpoints later than this are stored raw but left out of journeys",
        "timer_interval": "seconds between checks for due drop-off deadlines (at most 1)",
        "journey_max_live_touchpoints": "touchpoints one customer keeps live; beyond it the key "
        "is hot: folded early, its journeys use its newest touchpoints (docs/journeys.md)",
        "journey_max_state_bytes": "the most bytes one customer's stored state takes (a hot key "
        "is folded to stay within it; at most 900 KiB, under Kafka's message limit)",
        "max_users_per_device": "a device (anonymousId) linked to more userIds than this is shared "
        "(a kiosk): its anonymous touchpoints stay its own customer (docs/journeys.md, rule 1)",
    },
}

# Defaults that depend on the machine or the installation, shown as what they mean.
_SHOWN_DEFAULTS = {
    "kafka_home": "`~/.cache/touchpoint-tracker/kafka` (`$XDG_CACHE_HOME` if set)",
    "journeys_file": "the packaged `journeys.example.yaml` (`tracker defaults DIR` copies it)",
}


def _default(name: str) -> str:
    if name in _SHOWN_DEFAULTS:
        return _SHOWN_DEFAULTS[name]
    value: Any = Settings.model_fields[name].default
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if value is None or value == "":
        return "*(empty)*"
    if isinstance(value, bool):
        value = str(value).lower()
    return f"`{value}`"


def settings_page() -> str:
    lines = [
        "# Settings",
        "",
        "<!-- Generated by `tracker docs settings` from tracker/settings.py and tracker/docs.py;",
        "     a test fails when this file differs. Edit those, then regenerate. -->",
        "",
        "Every process reads its settings once, at start, from environment variables with the",
        "`TRACKER_` prefix. Relative paths are relative to the directory the command runs in. An",
        "invalid value stops the command at start with `tracker: invalid settings: ...` and exit",
        "code 2.",
    ]
    for section, fields in SETTINGS.items():
        lines += ["", f"## {section}", "", "| variable | default | meaning |"]
        lines += ["| --- | --- | --- |"]
        lines += [
            f"| `TRACKER_{name.upper()}` | {_default(name)} | {meaning} |"
            for name, meaning in fields.items()
        ]
    return "\n".join(lines) + "\n"


_KINDS = {"counter": "counter", "histogram": "histogram", "gauge": "gauge"}


def metrics_page() -> str:
    registry = CollectorRegistry()
    Metrics(registry)
    lines = [
        "# Metrics",
        "",
        "<!-- Generated by `tracker docs metrics` from tracker/metrics.py; a test fails when this",
        "     file differs. Edit the metrics, then regenerate. -->",
        "",
        "The collector and every worker serve these on `GET /metrics` (Prometheus text format).",
        "Labels come only from bounded sets: source, message type, reject reason, table, topic",
        "and partition, and the journey, stage and signal names of the journey definitions.",
        "Durations are in seconds. How journey counters are corrected is in",
        "[operations.md](operations.md#corrections).",
        "",
        "| metric | type | labels | what |",
        "| --- | --- | --- | --- |",
    ]
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = getattr(registry._names_to_collectors.get(name), "_labelnames", ())
        lines.append(f"| `{name}` | {family.type} | {', '.join(labels)} | {family.documentation} |")
    return "\n".join(lines) + "\n"


PAGES = {"settings": settings_page, "metrics": metrics_page}
