"""The collector's publisher leaves producer states aiokafka never leaves by itself.

The broken state is made the way a slow broker restart makes it: the producer's sequence number
for one partition runs ahead of what it sent (aiokafka numbers a batch that expires waiting for a
leader, then drops it). The real broker then refuses that partition's batches as out of order.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from tracker.collector.publisher import Publisher
from tracker.errors import UnavailableError
from tracker.kafka.broker import EmbeddedKafka
from tracker.kafka.client import ensure_topics
from tracker.settings import Settings

pytestmark = pytest.mark.integration


def _message(n: int) -> tuple[bytes, bytes]:
    # One key: every message goes to the same partition, the one made to break.
    return b"customer-1", orjson.dumps([{"message_id": f"m-{n}"}])


async def _published_ids(settings: Settings, bootstrap: str) -> list[str]:
    consumer = AIOKafkaConsumer(
        settings.topic_touchpoints,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        ids: list[str] = []
        while batches := await consumer.getmany(timeout_ms=2000):
            for messages in batches.values():
                ids += [r["message_id"] for m in messages for r in orjson.loads(m.value)]
        return ids
    finally:
        await consumer.stop()


async def test_out_of_order_sequence_rebuilds_the_producer(
    settings: Settings, kafka: EmbeddedKafka
) -> None:
    await ensure_topics(settings, kafka.bootstrap, [settings.topic_touchpoints])
    reasons: list[str] = []
    publisher = Publisher(settings, kafka.bootstrap, on_rebuild=reasons.append)
    await publisher.start(give_up_after=30)
    topic = settings.topic_touchpoints
    try:
        await publisher.publish(topic, [_message(0)])
        assert publisher.ready

        # The fault: a sequence number spent without a batch sent, as an expired batch does.
        producer = publisher._producer
        assert producer is not None
        partition = (await producer.send_and_wait(topic, b"[]", key=b"customer-1")).partition
        producer._txn_manager.increment_sequence_number(TopicPartition(topic, partition), 3)

        with pytest.raises(UnavailableError, match="OutOfOrderSequenceNumber"):
            await publisher.publish(topic, [_message(1)])
        assert reasons == ["OutOfOrderSequenceNumber"]
        assert not publisher.ready
        assert publisher.state in ("rebuilding_producer", "kafka_not_acknowledging")

        async def published_again() -> None:
            while True:
                try:
                    await publisher.publish(topic, [_message(1)])
                    return
                except UnavailableError:
                    await asyncio.sleep(0.1)

        await asyncio.wait_for(published_again(), 30)
        await publisher.publish(topic, [_message(2)])
        assert publisher.ready and publisher.state == "ok"
        assert publisher._producer is not producer
        assert publisher.rebuilds == 1
    finally:
        await publisher.stop()

    # Acknowledged once, stored once: m-1 was refused (503) and then sent again.
    ids = await asyncio.wait_for(_published_ids(settings, kafka.bootstrap), 30)
    assert ids == ["m-0", "m-1", "m-2"]
