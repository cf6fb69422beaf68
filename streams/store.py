"""Persistent table storage: faust's RocksDB store (through ``rocksdict``), keyed like our topics.

With tables kept in memory a restarted worker reads every table's whole changelog before it
writes anything new, so its start time grows with all the state it ever held. A RocksDB store
keeps each changelog partition in ``<data_dir>/faust/.../<table>-<partition>.db`` with the
changelog offset it holds, and a restart reads only the changelog's tail after that offset.

faust's store files a written key under the partition of the event being processed. The journey
agents write in batches that span partitions, and from timers, where no event is current; every
key belongs to the partition Kafka's default partitioner gives it (the tables are created with
``use_partitioner``, so their changelog is partitioned that way), and this store files it there.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2
from faust.stores import STORES
from faust.stores.rocksdb import Store

SCHEME = "tracker-rocksdb"


class KeyPartitionedStore(Store):
    def _set(self, key: bytes, value: bytes | None) -> None:
        partitions = self.table.partitions or self.app.conf.topic_partitions
        partition = (murmur2(key) & 0x7FFFFFFF) % partitions
        self._key_index[key] = partition
        self._db_for_partition(partition).put(key, value)


STORES.aliases[SCHEME] = f"{__name__}:KeyPartitionedStore"
