"""One settings object, read once at start-up from ``TRACKER_*`` environment variables.

Every process (collector, worker, CLI) builds a :class:`Settings` in ``main`` and passes it down;
no module reads the environment on its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from tracker import defaults

# The source checkout (tests and benchmarks read deploy/ and docs/ from it); an installed package
# never needs it: its defaults come from tracker.defaults.
REPO_ROOT = Path(__file__).resolve().parents[1]


def _user_cache() -> Path:
    """Where downloads that outlive a run go: $XDG_CACHE_HOME, else ~/.cache (never the package)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "touchpoint-tracker"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACKER_", frozen=True, extra="ignore")

    # Where local state lives: the embedded broker's log dirs, the chdb warehouse, run files.
    data_dir: Path = Path(".tracker-data")

    # Kafka. Empty bootstrap = start the embedded development broker.
    kafka_bootstrap: str = ""
    kafka_port: int = Field(default=19092, ge=0, le=65535)
    # A writable directory the embedded broker's jars are fetched into (by Maven, once per pom).
    kafka_home: Path = Field(default_factory=lambda: _user_cache() / "kafka")
    kafka_heap: str = "512m"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")

    topic_touchpoints: str = "touchpoints"
    topic_deadletter: str = "touchpoints-deadletter"
    topic_partitions: int = Field(default=4, ge=1)
    topic_replication: int = Field(default=1, ge=1)

    # ClickHouse. Empty URL = embedded chdb engine in <data_dir>/clickhouse.
    clickhouse_url: SecretStr = SecretStr("")
    clickhouse_database: str = Field(default="tracker", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # A ClickHouse cluster name (as in the servers' remote_servers): tables are then created
    # ON CLUSTER as Replicated*MergeTree <name>_local tables behind Distributed <name> tables.
    # Empty = one node (chdb or a single server).
    clickhouse_cluster: str = Field(default="", pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$")
    # Retention in days of raw touchpoints and journey results (by the journey instance's start);
    # 0 keeps them forever. Applied to existing tables at the worker's start.
    clickhouse_ttl_days: int = Field(default=0, ge=0)
    # Retention in days of the hourly funnel aggregates (usually longer than the raw data).
    clickhouse_aggregate_ttl_days: int = Field(default=0, ge=0)

    # Collector.
    collector_host: str = "127.0.0.1"
    collector_port: int = Field(default=8080, ge=0, le=65535)
    max_batch_bytes: int = Field(default=500 * 1024, ge=1024)
    max_message_bytes: int = Field(default=32 * 1024, ge=256)
    produce_timeout: float = Field(default=10.0, gt=0)
    # Records of requests arriving within this many ms go to Kafka together, as one message per
    # partition (the worker's cost is per message); at most this many bytes wait unacknowledged.
    collector_linger_ms: float = Field(default=5.0, ge=0, le=1000)
    collector_linger_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024 * 1024)
    # Slow or idle clients. A request's headers must be complete this long after their first
    # byte, and its body read this long after the headers; a connection with no request is
    # closed after the keep-alive timeout (longer than a load balancer's idle timeout, 60 s on
    # the common ones, so that the balancer closes first). At the connection bound a new client
    # replaces the oldest one waiting for headers.
    collector_header_timeout: float = Field(default=10.0, gt=0)
    collector_body_timeout: float = Field(default=30.0, gt=0)
    collector_keepalive_timeout: float = Field(default=75.0, gt=0)
    collector_max_connections: int = Field(default=4096, ge=1)
    # Who may send (write keys, browser origins, rate limits); unset = open development mode.
    sources_file: Path | None = None
    # Store context.ip with its last IPv4 octet zeroed (IPv6: cut to /48). On by default: an IP
    # address is personal data, and a journey needs at most the rough place it came from.
    anonymize_ip: bool = True
    # Proxies in front of the collector that append to X-Forwarded-For. 0 = the header is ignored
    # (a client could write anything into it) and the TCP peer is the client.
    trusted_proxy_hops: int = Field(default=0, ge=0, le=10)
    # The collector's event loop: uvloop (faster sockets and scheduling) or the standard asyncio
    # loop; "uvloop" falls back to asyncio where uvloop is not installed.
    collector_event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    # Worker.
    app_id: str = "touchpoint-tracker"
    worker_host: str = "127.0.0.1"
    worker_port: int = Field(default=8081, ge=0, le=65535)
    sink_max_rows: int = Field(default=20_000, ge=1)
    sink_max_seconds: float = Field(default=0.5, gt=0)
    sink_retry_max_seconds: float = Field(default=30.0, gt=0)
    # The bearer token the worker's read-only POST /query (personal data) demands of every caller.
    # Empty = /query answers loopback clients only. `tracker query` sends it.
    query_token: SecretStr = SecretStr("")

    # Journeys.
    journeys_file: Path = Field(default_factory=lambda: defaults.path("journeys.example.yaml"))
    allowed_lateness: str = "1h"  # later touchpoints are stored raw but left out of journeys
    # Hard bounds per customer (a hot key: a bot, a shared kiosk id). Beyond them its journeys use
    # its newest touchpoints; raw rows are still stored. See docs/journeys.md, "Hot keys".
    journey_max_live_touchpoints: int = Field(default=2000, ge=10)
    journey_max_state_bytes: int = Field(default=512 * 1024, ge=16 * 1024, le=900 * 1024)
    # A device (anonymousId) linked to more userIds than this is shared (a kiosk): its anonymous
    # touchpoints stay on its own customer instead of going to the user logged in at the time.
    max_users_per_device: int = Field(default=10, ge=1)
    timer_interval: float = Field(default=0.25, gt=0, le=1.0)
    # How long a crashed worker keeps its partitions before the group hands them on.
    worker_session_timeout: float = Field(default=10.0, ge=6.0)
    # Where the worker keeps its tables: "rocksdb" on disk under <data_dir>/faust (a restart
    # reads only the changelog's tail), or "memory" (a restart reads the whole changelog).
    worker_store: Literal["rocksdb", "memory"] = "rocksdb"

    log_level: str = "info"

    @property
    def embedded_kafka(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def embedded_clickhouse(self) -> bool:
        return not self.clickhouse_url.get_secret_value()

    @property
    def clickhouse_dsn(self) -> str:
        url = self.clickhouse_url.get_secret_value()
        return url or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def run_file(self) -> Path:
        """Where a running pipeline records its endpoints, for ``tracker query``."""
        return self.data_dir / "run.json"
