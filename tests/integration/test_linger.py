"""Concurrent requests' records reach Kafka together, one keyless message per partition."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from tracker.collector.linger import Linger
from tracker.collector.publisher import Publisher
from tracker.kafka.broker import EmbeddedKafka
from tracker.kafka.client import ensure_topics
from tracker.settings import Settings

pytestmark = pytest.mark.integration


async def _messages(topic: str, bootstrap: str, want: int) -> list[tuple[int, bytes | None, list]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        out: list[tuple[int, bytes | None, list]] = []
        async with asyncio.timeout(30):
            while sum(len(records) for _, _, records in out) < want:
                batches = await consumer.getmany(timeout_ms=500)
                for messages in batches.values():
                    out += [(m.partition, m.key, orjson.loads(m.value)) for m in messages]
        return out
    finally:
        await consumer.stop()


async def test_concurrent_requests_share_messages_and_each_record_keeps_its_partition(
    settings: Settings, kafka: EmbeddedKafka
) -> None:
    topic = settings.topic_touchpoints
    await ensure_topics(settings, kafka.bootstrap, [topic])
    publisher = Publisher(settings, kafka.bootstrap)
    await publisher.start()
    linger = Linger(publisher, topic, seconds=0.05, max_pending_bytes=1 << 20, wait_seconds=5)
    requests = [
        [
            {"message_id": f"r{n}-{i}", "user_id": "", "anonymous_id": f"visitor-{n}"}
            for i in range(3)
        ]
        for n in range(40)
    ]
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(linger.publish(records) for records in requests))
        await linger.stop()
    finally:
        await publisher.stop()

    got = await _messages(topic, kafka.bootstrap, want=120)
    partitions = sorted({p for p, _, _ in got} | set(range(4)))
    assert len(got) <= 4  # 40 requests in one window: at most a message per partition
    assert all(key is None for _, key, _ in got)
    seen: dict[str, list[str]] = {}
    for partition, _, records in got:
        for record in records:
            key = record["anonymous_id"]
            assert DefaultPartitioner()(key.encode(), partitions, partitions) == partition
            seen.setdefault(key, []).append(record["message_id"])
    assert seen == {f"visitor-{n}": [f"r{n}-{i}" for i in range(3)] for n in range(40)}


async def test_a_request_over_the_byte_bound_waits_for_room_then_is_sent(
    settings: Settings, kafka: EmbeddedKafka
) -> None:
    topic = settings.topic_touchpoints
    await ensure_topics(settings, kafka.bootstrap, [topic])
    publisher = Publisher(settings, kafka.bootstrap)
    await publisher.start()
    # Room for one request at a time: the second waits until the first is acknowledged.
    big = "x" * 600_000
    linger = Linger(publisher, topic, seconds=0.01, max_pending_bytes=1 << 20, wait_seconds=20)
    requests = [[{"message_id": f"m{n}", "user_id": f"u{n}", "anonymous_id": "", "pad": big}]
                for n in range(2)]  # fmt: skip
    try:
        async with asyncio.timeout(30):
            first = asyncio.create_task(linger.publish(requests[0]))
            await asyncio.sleep(0)  # the first is admitted and holds the room
            second = asyncio.create_task(linger.publish(requests[1]))
            await first
            assert not second.done() or second.exception() is None
            await second
    finally:
        await linger.stop()
        await publisher.stop()
    got = await _messages(topic, kafka.bootstrap, want=2)
    assert sorted(r["message_id"] for _, _, records in got for r in records) == ["m0", "m1"]
