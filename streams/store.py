"""Persistent table storage: faust's RocksDB store (through ``rocksdict``), keyed like our topics.

With tables kept in memory a restarted worker reads every table's whole changelog before it
writes anything new, so its start time grows with all the state it ever held. A RocksDB store
keeps each changelog partition in ``<data_dir>/faust/.../<table>-<partition>.db`` with the
changelog offset it holds, and a restart reads only the changelog's tail after that offset.

faust's store files a written key under the partition of the event being processed. The journey
agents write in batches that span partitions, and from timers, where no event is current; every
key belongs to the partition Kafka's default partitioner gives it (the tables are created with
``use_partitioner``, so their changelog is partitioned that way), and this store files it there.

Reads go straight to that partition's database too. faust's store remembers the partition of
the keys it saw last (an index of ``table_key_index_size`` keys, 1,000, behind a lock) and asks
every partition's database for any other key: with a million customers nearly every read missed
that index and asked every database.

faust opens every partition's database with RocksDB memory settings sized for one big table: up
to three 64 MiB write buffers (memtables) and a 2 GiB block cache each. A worker holds a
database for every partition of four tables, so what RocksDB keeps in memory would only be
bounded by the data: the memtables alone swing by 64 MiB per partition between flushes, and the
block cache keeps every block read, which after a restart (the timer rebuild reads every state)
is every state held. This store gives each database :data:`MEMORY`: two 8 MiB write buffers and
an 8 MiB block cache, so the customers table's four partitions hold at most 96 MiB in all,
whatever the number of customers. (A table's own ``options`` still take precedence.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka.partitioner import murmur2
from faust.stores import STORES
from faust.stores.rocksdb import Store

SCHEME = "tracker-rocksdb"
MEMORY = {  # RocksDB's memory per partition database (see the module's text)
    "write_buffer_size": 8 << 20,
    "max_write_buffer_number": 2,
    "block_cache_size": 8 << 20,
}


class KeyPartitionedStore(Store):
    def __init__(self, url: Any, app: Any, table: Any, **kwargs: Any) -> None:
        kwargs["options"] = {**MEMORY, **(kwargs.get("options") or {})}
        super().__init__(url, app, table, **kwargs)

    def _partition(self, key: bytes) -> int:
        partitions = self.table.partitions or self.app.conf.topic_partitions
        return int((murmur2(key) & 0x7FFFFFFF) % partitions)

    def _set(self, key: bytes, value: bytes | None) -> None:
        self._db_for_partition(self._partition(key)).put(key, value)

    def _get(self, key: bytes) -> bytes | None:
        db = self._dbs.get(self._partition(key))
        value: bytes | None = None if db is None else db.get(key)
        return value

    def _dbs_for_key(self, key: bytes) -> Iterable[Any]:
        db = self._dbs.get(self._partition(key))
        return () if db is None else (db,)


STORES.aliases[SCHEME] = f"{__name__}:KeyPartitionedStore"
