"""Kafka's default partitioner's hash, as the collector and the worker compute it."""

from __future__ import annotations

import random
import uuid

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as client_murmur2

from tracker.kafka.partitioner import murmur2, partition_of


def test_murmur2_is_the_clients_for_every_length_and_byte() -> None:
    rnd = random.Random(7)
    for length in range(300):  # past the cached unpackers too
        for _ in range(20):
            data = rnd.randbytes(length)
            assert murmur2(data) == client_murmur2(data), data


def test_partitions_are_the_default_partitioners() -> None:
    partitioner = DefaultPartitioner()
    keys = [str(uuid.UUID(int=random.Random(i).getrandbits(128))).encode() for i in range(500)]
    keys += [f"visitor-{i}".encode() for i in range(500)] + ["ünïcode-ключ".encode(), b""]
    for n in (1, 2, 3, 12, 100):
        parts = list(range(n))
        for key in keys:
            assert partition_of(key, n) == partitioner(key, parts, parts), key
