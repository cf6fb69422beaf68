"""Records grouped into Kafka messages by the partition of their customer key."""

from __future__ import annotations

import random
from typing import Any

import orjson
from aiokafka.partitioner import DefaultPartitioner

from tracker.collector.linger import partition_batches, partition_of
from tracker.core.touchpoint import record_key


def _record(i: int, user: str, anon: str, pad: int = 0) -> dict[str, Any]:
    return {"message_id": f"m{i}", "user_id": user, "anonymous_id": anon, "pad": "x" * pad}


def test_partitions_match_kafkas_default_partitioner() -> None:
    rnd = random.Random(13)
    partitioner = DefaultPartitioner()
    for n in (1, 3, 4, 12):
        parts = list(range(n))
        for i in range(1000):
            key = f"{rnd.choice(['visitor', 'user', 'kiosk'])}-{rnd.getrandbits(48):x}-{i}"
            assert partition_of(key, parts) == partitioner(key.encode(), parts, parts), key


def test_each_record_goes_to_its_customer_keys_partition_in_order() -> None:
    rnd = random.Random(5)
    parts = [0, 1, 2, 3]
    records = [
        _record(i, rnd.choice(["", f"u{rnd.randrange(30)}"]), f"a{rnd.randrange(60)}")
        for i in range(2000)
    ]
    batches = partition_batches(records, parts, max_bytes=4096)
    partitioner = DefaultPartitioner()
    seen: dict[str, list[str]] = {}
    for partition, value in batches:
        assert len(value) <= 4096
        for record in orjson.loads(value):
            key = record_key(record)
            assert partitioner(key.encode(), parts, parts) == partition
            seen.setdefault(key, []).append(record["message_id"])
    expected: dict[str, list[str]] = {}
    for record in records:
        expected.setdefault(record_key(record), []).append(record["message_id"])
    assert seen == expected  # every record once, each customer's in the order they came
    assert len(batches) < len(records) / 10  # many customers to a message


def test_messages_stop_at_the_byte_cap_and_a_large_record_goes_alone() -> None:
    records = [_record(i, "", "a", pad=900) for i in range(10)] + [_record(10, "", "a", pad=5000)]
    batches = partition_batches(records, [0, 1], max_bytes=2048)
    ids = [[r["message_id"] for r in orjson.loads(value)] for _, value in batches]
    assert ids == [["m0", "m1"], ["m2", "m3"], ["m4", "m5"], ["m6", "m7"], ["m8", "m9"], ["m10"]]
    assert all(len(value) <= 2048 for _, value in batches[:-1])
    assert {p for p, _ in batches} == {partition_of("a", [0, 1])}


def test_a_single_partition_topic_gets_one_message() -> None:
    records = [_record(i, f"u{i}", "") for i in range(100)]
    batches = partition_batches(records, [0])
    assert len(batches) == 1
    assert [r["message_id"] for r in orjson.loads(batches[0][1])] == [f"m{i}" for i in range(100)]
