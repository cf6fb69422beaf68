"""Faults an operator meets, under a steady stream of known messageIds.

Each test streams numbered batches through a real collector with a client that retries with the
same messageIds, injects one fault, and then checks that every acknowledged id is in the
warehouse exactly once under FINAL. Tests that kill a broker start their own.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.faults import (
    assert_each_id_once,
    http_status,
    start_clients,
    stop_all,
    wait_for_acks,
)
from tests.integration.processes import Process, query, wait_until
from tracker.kafka.broker import EmbeddedKafka
from tracker.settings import REPO_ROOT, Settings

pytestmark = pytest.mark.integration

# How long the broker stays down: longer than the producer's request timeout (15 s), so that
# batches waiting for a partition leader expire inside the producer, as in a slow restart.
OUTAGE_SECONDS = 20.0
# What a client sees when the server dies in the middle of its request.
CUT_OFF = ("RemoteDisconnected", "ConnectionResetError", "BrokenPipeError")


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[EmbeddedKafka]:
    broker = EmbeddedKafka(
        tmp_path / "own-kafka",
        kafka_home=REPO_ROOT / "deploy" / "kafka",
        heap="384m",
        partitions=4,
    )
    broker.start()
    yield broker
    broker.stop()


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_broker_restart_the_collector_recovers_by_itself(
    signal_name: str, settings: Settings, own_kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    collector = Process("collector", settings, own_kafka.bootstrap, tmp_path).wait_ready()
    clients = start_clients(lambda: collector.url, f"restart-{signal_name}")
    try:
        wait_for_acks(clients, 20, timeout=30, what="acks before the fault")
        assert http_status(f"{collector.url}/health") == 200
        down_at = time.monotonic()
        if signal_name == "SIGTERM":
            own_kafka.stop()
        else:
            own_kafka.kill()
        wait_until(
            lambda: http_status(f"{collector.url}/health") == 503,
            timeout=30,
            what="the collector to report not-ready while Kafka is down",
        )
        assert http_status(f"{collector.url}/health/live") == 200
        time.sleep(max(0.0, down_at + OUTAGE_SECONDS - time.monotonic()))  # the fault itself
        own_kafka.start()
        wait_for_acks(clients, 50, timeout=120, what="acks after the restart")
        assert http_status(f"{collector.url}/health") == 200
        assert collector.proc.poll() is None, "the collector was never restarted"
    finally:
        stop_all(clients, collector)
        log = collector.log_path.read_text(errors="replace")
        print("\n".join(line for line in log.splitlines() if "event=producer" in line))
    assert_each_id_once(settings, own_kafka.bootstrap, tmp_path, clients)


def test_collector_killed_with_requests_in_flight(
    settings: Settings, kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    collectors = [Process("collector", settings, kafka.bootstrap, tmp_path).wait_ready()]
    clients = start_clients(lambda: collectors[-1].url, "ckill", pause=0.0)
    try:
        wait_for_acks(clients, 30, timeout=60, what="acks before the kill")
        collectors[-1].kill()
        collectors.append(Process("collector", settings, kafka.bootstrap, tmp_path).wait_ready())
        wait_for_acks(clients, 30, timeout=60, what="acks from the new collector")
    finally:
        stop_all(clients, collectors[-1])
    cut = sum(c.answers[name] for c in clients for name in CUT_OFF)
    assert cut > 0, "the kill met no request in flight; the test proved nothing"
    assert_each_id_once(settings, kafka.bootstrap, tmp_path, clients)


RESULTS = (
    "SELECT journey, kind, customer, instance, level, stage, toUnixTimestamp64Milli(at) AS at "
    "FROM tracker.journey_results FINAL ORDER BY ALL"
)
ROWS = "SELECT count() AS n FROM tracker.touchpoints FINAL"
IDS = "SELECT message_id FROM tracker.touchpoints FINAL"


def test_a_worker_rides_out_a_broker_restart_and_its_results_stay_exact(
    settings: Settings, own_kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """The broker goes away under a running worker for longer than the producer's request
    timeout: the worker keeps running and retries its reads and writes. Afterwards every
    acknowledged id is in the warehouse once, and the journeys are what a worker that never saw
    the fault computes from the same topic (its own group, tables and warehouse)."""
    collector = Process("collector", settings, own_kafka.bootstrap, tmp_path).wait_ready()
    worker = Process("worker", settings, own_kafka.bootstrap, tmp_path).wait_ready()
    clients = start_clients(lambda: collector.url, "wrestart")
    try:
        wait_for_acks(clients, 20, timeout=30, what="acks before the fault")
        wait_until(lambda: query(worker.url, ROWS)[0]["n"] > 500, timeout=60,
                   what="the worker writing rows before the fault")  # fmt: skip
        down_at = time.monotonic()
        own_kafka.kill()
        time.sleep(max(0.0, down_at + OUTAGE_SECONDS - time.monotonic()))  # the fault itself
        own_kafka.start()
        wait_for_acks(clients, 50, timeout=120, what="acks after the restart")
    finally:
        stop_all(clients, collector)
    expected = sorted(i for client in clients for i in client.ids())
    try:
        assert worker.proc.poll() is None, worker.log_path.read_text(errors="replace")[-3000:]
        wait_until(lambda: query(worker.url, ROWS)[0]["n"] >= len(expected), timeout=120,
                   what=f"{len(expected)} touchpoints in the warehouse")  # fmt: skip
        stored = Counter(r["message_id"] for r in query(worker.url, IDS))
        # Each of the 4 x 50 visitors enters the first stage once (its timeout is 30 minutes).
        survived = wait_until(lambda: (rows := query(worker.url, RESULTS)) and len(rows) == 200
                              and rows, timeout=60, what="every visitor's stage entry")  # fmt: skip
    finally:
        worker.stop()
    assert sorted(stored) == expected and set(stored.values()) == {1}
    assert {(r["kind"], r["stage"]) for r in survived} == {("stage", "product")}
    unfaulted = settings.model_copy(
        update={"app_id": f"{settings.app_id}-unfaulted", "data_dir": tmp_path / "unfaulted"}
    )
    replay = Process("worker", unfaulted, own_kafka.bootstrap, tmp_path).wait_ready()
    try:
        wait_until(lambda: query(replay.url, ROWS)[0]["n"] >= len(expected), timeout=120,
                   what="the unfaulted worker's touchpoints")  # fmt: skip
        wait_until(lambda: query(replay.url, RESULTS) == survived, timeout=60,
                   what="the unfaulted worker's journeys to be the same")  # fmt: skip
    finally:
        replay.stop()
