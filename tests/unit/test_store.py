"""The RocksDB table store files every key in the partition Kafka's default partitioner gives
it, and reads it from there: keys recovered from the changelog, which it never wrote itself,
are found, however many there are."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest

from streams.store import MEMORY, SCHEME, KeyPartitionedStore
from tracker.kafka.partitioner import partition_of

PARTITIONS = 4


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Any]:
    app = faust.App("test-store", store=f"{SCHEME}://", datadir=str(tmp_path),
                    topic_partitions=PARTITIONS)  # fmt: skip
    table = app.Table("customers", partitions=PARTITIONS, use_partitioner=True, key_type=bytes,
                      value_type=bytes)  # fmt: skip
    assert isinstance(table.data, KeyPartitionedStore)
    yield table.data
    for db in table.data._dbs.values():
        db.close()


def test_a_written_key_is_in_its_partition_only(store: Any) -> None:
    for p in range(PARTITIONS):
        store._db_for_partition(p)
    keys = [f"visitor-{i}".encode() for i in range(200)]
    for key in keys:
        store[key] = b"state of " + key
    for key in keys:
        assert store[key] == b"state of " + key
        held = [p for p, db in store._dbs.items() if db.get(key) is not None]
        assert held == [partition_of(key, PARTITIONS)]
    assert store.get(b"nobody") is None
    assert b"nobody" not in store
    del store[keys[0]]
    assert keys[0] not in store
    assert store.get(keys[1]) == b"state of " + keys[1]


def test_keys_recovered_from_the_changelog_are_found(store: Any) -> None:
    # Recovery writes straight into each partition's database (as apply_changelog_batch does):
    # many more keys than faust's key index remembers (table_key_index_size, 1,000).
    keys = [f"customer-{i}".encode() for i in range(5_000)]
    for key in keys:
        store._db_for_partition(partition_of(key, PARTITIONS)).put(key, key[::-1])
    assert all(store.get(key) == key[::-1] for key in keys)
    assert all(key in store for key in keys[:100])


def test_a_key_of_a_partition_not_held_here_is_not_found(store: Any) -> None:
    key = b"visitor-7"
    store[key] = b"v"
    store._dbs.pop(partition_of(key, PARTITIONS)).close()  # revoked
    assert store.get(key) is None
    assert key not in store


def test_rocksdb_memory_is_bounded_per_database_unless_the_table_says_otherwise(
    store: Any, tmp_path: Path
) -> None:
    opts = store.rocksdb_options
    assert (opts.write_buffer_size, opts.max_write_buffer_number, opts.block_cache_size) == (
        8 << 20, 2, 8 << 20,
    )  # fmt: skip
    app = faust.App("test-store-own", store=f"{SCHEME}://", datadir=str(tmp_path / "own"))
    table = app.Table("own", partitions=1, use_partitioner=True, key_type=bytes,
                      value_type=bytes, options={"block_cache_size": 1 << 20})  # fmt: skip
    own = table.data.rocksdb_options
    assert (own.write_buffer_size, own.block_cache_size) == (MEMORY["write_buffer_size"], 1 << 20)


def test_the_shared_partitioner_agrees_with_kafka_and_keeps_a_bounded_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiokafka.partitioner import DefaultPartitioner

    from streams import writes

    monkeypatch.setattr(writes, "PARTITIONS_CACHED", 50)
    kafka = DefaultPartitioner()
    for n in (1, 4, 12):
        partitioner, parts = writes.Partitioner(n), list(range(n))
        for round_ in range(2):  # computed, then (for the last keys) from the cache
            for i in range(120):
                key = f"visitor-{i}-{n}".encode()
                assert partitioner(key) == kafka(key, parts, parts), (key, round_)
                assert len(partitioner._cached) <= 50
