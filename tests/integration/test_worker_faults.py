"""Faults a worker meets in production: a crash, and a worker lost for good."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.processes import Process, wait_until
from tracker.kafka.broker import EmbeddedKafka
from tracker.settings import Settings

pytestmark = pytest.mark.integration


async def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def test_a_crashed_worker_exits_with_code_70(
    settings: Settings, kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    """A message on the worker's internal topic that is not JSON makes its agent fail, and the
    failure crashes the app: the process must end with the code a supervisor restarts on."""
    worker = Process("worker", settings, kafka.bootstrap, tmp_path).wait_ready()
    topic = f"{settings.app_id}-journey-input"
    asyncio.run(asyncio.wait_for(_produce(kafka.bootstrap, topic, b"k", b"not json"), 30))
    try:
        wait_until(lambda: worker.proc.poll() is not None, timeout=60, what="the worker to exit")
        output = worker.output()
    finally:
        code = worker.stop()
    assert code == 70, output
    assert "event=worker_crashed" in output


def test_a_stopped_worker_exits_with_code_0(
    settings: Settings, kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    worker = Process("worker", settings, kafka.bootstrap, tmp_path).wait_ready()
    assert worker.stop() == 0, worker.log_path.read_text()[-3000:]
