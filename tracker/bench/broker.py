"""The Kafka a benchmark runs against: the one ``TRACKER_KAFKA_BOOTSTRAP`` names, else its own."""

from __future__ import annotations

from pathlib import Path

from tracker.kafka.broker import EmbeddedKafka
from tracker.settings import Settings


def start_kafka(settings: Settings, workdir: Path) -> tuple[EmbeddedKafka | None, str]:
    """The bootstrap address, and the embedded broker started for it (to stop after) if any."""
    if settings.kafka_bootstrap:
        return None, settings.kafka_bootstrap
    kafka = EmbeddedKafka(workdir / "kafka", kafka_home=settings.kafka_home, heap="1g",
                          partitions=settings.topic_partitions)  # fmt: skip
    kafka.start()
    return kafka, kafka.bootstrap
