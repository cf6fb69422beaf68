"""A three-node KRaft cluster from the same jars: one broker lost under load loses nothing."""

from __future__ import annotations

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
from tests.integration.processes import Process
from tracker.kafka.broker import EmbeddedKafka, cluster_nodes
from tracker.settings import REPO_ROOT, Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[EmbeddedKafka]]:
    """Three combined broker-controllers; replication 3 and min.insync.replicas=2 by default."""
    brokers = [
        EmbeddedKafka(
            tmp_path / f"node-{node.node_id}",
            kafka_home=REPO_ROOT / "deploy" / "kafka",
            heap="256m",
            partitions=4,
            node=node,
        )
        for node in cluster_nodes(3)
    ]
    try:
        for broker in brokers:
            broker.launch()
        for broker in brokers:
            broker.wait_ready(timeout=120)
        yield brokers
    finally:
        for broker in brokers:
            broker.stop()


def test_one_broker_of_three_killed_under_load(
    settings: Settings, cluster: list[EmbeddedKafka], tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"topic_replication": 3})
    bootstrap = ",".join(broker.bootstrap for broker in cluster)
    collector = Process("collector", settings, bootstrap, tmp_path).wait_ready()
    clients = start_clients(lambda: collector.url, "cluster")
    try:
        wait_for_acks(clients, 20, timeout=60, what="acks before the kill")
        cluster[1].kill()
        wait_for_acks(clients, 50, timeout=120, what="acks with two brokers left")
        assert http_status(f"{collector.url}/health") == 200
        assert collector.proc.poll() is None, "the collector was never restarted"
    finally:
        stop_all(clients, collector)
    # The worker creates its own topics now, with two brokers left: two replicas each.
    after_loss = settings.model_copy(update={"topic_replication": 2})
    assert_each_id_once(after_loss, bootstrap, tmp_path, clients)
