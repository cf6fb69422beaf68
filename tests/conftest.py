"""Shared fixtures: the real Kafka broker (one per session) and per-test settings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from tracker.kafka.broker import EmbeddedKafka
from tracker.settings import Settings

# The property tests draw the same examples on every run, so the suite is deterministic; explore
# new ones with `pytest --hypothesis-seed=N` (docs/journeys.md lists what such runs found).
hypothesis_settings.register_profile("deterministic", derandomize=True)
hypothesis_settings.load_profile("deterministic")


@pytest.fixture(scope="session")
def kafka(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[EmbeddedKafka]:
    broker = EmbeddedKafka(
        tmp_path_factory.mktemp("kafka"),
        port=0,
        kafka_home=Settings().kafka_home,
        heap="384m",
        partitions=4,
    )
    broker.start()
    print(f"\nembedded Kafka {broker.bootstrap} ready in {broker.start_seconds:.1f}s")
    yield broker
    broker.stop()
    if request.session.testsfailed:
        print(f"\n--- Kafka broker log (tail) ---\n{broker.log_tail()}")


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(tmp_path: Path, unique: str) -> Settings:
    """Settings with a topic, consumer group and data directory of this test's own."""
    return Settings(
        data_dir=tmp_path / "data",
        topic_touchpoints=f"touchpoints-{unique}",
        topic_deadletter=f"deadletter-{unique}",
        app_id=f"tracker-test-{unique}",
        topic_partitions=4,
        collector_port=0,
        worker_port=0,
        kafka_port=0,
        sink_max_seconds=0.2,
    )
