"""Reading a topic back from the real broker, to check exactly what a process wrote."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition


async def _read(bootstrap: str, topic: str, at_least: int, seconds: float) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[Any] = []
    records = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                out += messages
                records += sum(len(orjson.loads(m.value)) for m in messages)
            # Past the expected count, one more empty poll shows nothing else follows.
            if records >= at_least and not batches:
                break
        return out
    finally:
        await consumer.stop()


def read_topic(
    bootstrap: str, topic: str, *, at_least: int, timeout: float = 30.0
) -> list[tuple[bytes | None, bytes]]:
    """Every ``(key, value)`` of a touchpoints topic (values are JSON arrays of records): waits
    for ``at_least`` records, then for quiet."""
    messages = _messages(bootstrap, topic, at_least, timeout)
    return [(m.key, m.value) for m in messages]


def read_records(
    bootstrap: str, topic: str, *, at_least: int, timeout: float = 30.0
) -> list[tuple[int, dict[str, Any]]]:
    """Every record of a touchpoints topic with the partition it is on, as :func:`read_topic`."""
    messages = _messages(bootstrap, topic, at_least, timeout)
    return [(m.partition, record) for m in messages for record in orjson.loads(m.value)]


def _messages(bootstrap: str, topic: str, at_least: int, timeout: float) -> list[Any]:
    return asyncio.run(asyncio.wait_for(_read(bootstrap, topic, at_least, timeout), timeout + 15))


async def _uncommitted(bootstrap: str, group: str, topic: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        await consumer.topics()  # metadata of every topic
        parts = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return sum(end - getattr(committed.get(tp), "offset", 0) for tp, end in ends.items())
    finally:
        await consumer.stop()
        await admin.close()


def uncommitted(bootstrap: str, group: str, topic: str) -> int:
    """How many of ``topic``'s messages consumer group ``group`` has not committed yet."""
    return asyncio.run(asyncio.wait_for(_uncommitted(bootstrap, group, topic), 30))
