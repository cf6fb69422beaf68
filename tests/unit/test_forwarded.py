"""Forwarded journey-input messages travel grouped, one Kafka message per partition, and come
back as the (key, message) pairs they were, in their order within the partition."""

from __future__ import annotations

import random

import orjson
import pytest

from streams.writes import Partitioner, group_forwarded, read_forwarded

PARTITIONS = 4


def _forward(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    rnd = random.Random(seed)
    keys = ["user-1", "anon-2", 'quote"d\\key', "ünïcode-kéy", *(f"c{i}" for i in range(20))]
    out = []
    for i in range(n):
        msg = {"kind": "tps", "tps": [[1000 + i, f"m{i}", "Product Viewed", "web", 1]]}
        if i % 3 == 0:
            msg = {"kind": "owner", "owner": rnd.choice(keys)}
        out.append((rnd.choice(keys).encode(), orjson.dumps(msg)))
    return out


def test_each_partition_gets_its_keys_messages_in_order() -> None:
    forward = _forward(300, seed=1)
    partition_of = Partitioner(PARTITIONS)
    grouped = group_forwarded(forward, partition_of)
    assert len(grouped) == len({partition_of(k) for k, _ in forward})  # one message each
    for partition in range(PARTITIONS):
        sent = [(k.decode(), orjson.loads(v)) for k, v in forward if partition_of(k) == partition]
        read = [pair for p, value in grouped if p == partition
                for pair in read_forwarded(None, value)]  # fmt: skip
        assert read == sent


def test_a_group_stays_within_its_bytes_and_a_bigger_message_goes_alone() -> None:
    forward = _forward(200, seed=2)
    big = (b"user-1", orjson.dumps({"kind": "tps", "tps": [[1, "x" * 5000, "e", "web", 0]]}))
    forward.insert(50, big)
    grouped = group_forwarded(forward, Partitioner(PARTITIONS), max_bytes=2000)
    assert len(grouped) > PARTITIONS
    for _, value in grouped:
        assert len(value) <= 2000 or len(read_forwarded(None, value)) == 1
    read: dict[int, list[tuple[str, object]]] = {p: [] for p in range(PARTITIONS)}
    for p, value in grouped:
        read[p] += read_forwarded(None, value)
    assert sum(len(v) for v in read.values()) == len(forward)
    partition_of = Partitioner(PARTITIONS)
    for p, pairs in read.items():
        assert pairs == [(k.decode(), orjson.loads(v)) for k, v in forward if partition_of(k) == p]


def test_a_message_written_one_per_key_before_grouping_is_still_read() -> None:
    value = orjson.dumps({"kind": "owner", "owner": "user-1"})
    assert read_forwarded(b"anon-2", value) == [("anon-2", {"kind": "owner", "owner": "user-1"})]
    with pytest.raises(ValueError, match="without a key"):
        read_forwarded(None, value)
    with pytest.raises(orjson.JSONDecodeError):
        read_forwarded(b"k", b"not json")  # the agent fails, and the worker with it
