"""The timer rebuild reads the stored states a slice at a time while customers keep changing:
the open-instance counts and the timers must come out as a recount of the final states gives."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from rocksdict import Rdict

from streams.journey_metrics import JourneyMetrics
from streams.timers import Rebuild, Timers
from tracker.core.journeys.codec import dump_state
from tracker.core.journeys.engine import CustomerState, JourneyEngine, Touchpoint
from tracker.kafka.partitioner import partition_of
from tracker.metrics import Metrics

from .test_journey_metrics import JOURNEYS

MIN = 60_000
PARTITIONS = 4
EVENTS = ("Product Viewed", "Product Added", "Order Completed")


class RocksStore:
    """faust's RocksDB store as the rebuild sees it: a database per partition."""

    offset_key = b"__faust\0offset__"

    def __init__(self, path: Path) -> None:
        self._dbs = {p: Rdict(str(path / f"p{p}")) for p in range(PARTITIONS)}
        for db in self._dbs.values():
            db[self.offset_key] = b"12"

    def _db_for_partition(self, partition: int) -> Rdict:
        return self._dbs[partition]

    def put(self, key: bytes, value: bytes) -> None:
        self._dbs[partition_of(key, PARTITIONS)][key] = value

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def put(self, key: bytes, value: bytes) -> None:
        self.data[key] = value

    def close(self) -> None:
        pass


class World:
    """Customers whose states are stored, changed the way the worker changes them."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.engine = JourneyEngine(JOURNEYS, lateness_ms=10**12)
        self.metrics = JourneyMetrics(JOURNEYS, Metrics(CollectorRegistry()))
        self.timers = Timers()
        self.states: dict[str, CustomerState] = {}
        self.clock = 0
        # Written but not in the store yet, as the worker's states are until their changelog
        # sends are acknowledged (streams/writes.py): the rebuild reads these first.
        self.pending: dict[bytes, bytes] = {}

    def touch(self, customer: str, rng: random.Random) -> None:
        self.clock += 1
        state = self.states.setdefault(customer, CustomerState(customer))
        tp = Touchpoint(self.clock * MIN, f"m{self.clock}", "track", rng.choice(EVENTS), "web",
                        "", {})  # fmt: skip
        self.engine.add(state, [tp])
        changes = self.engine.settle(state, self.clock * MIN)
        self.metrics.changes(state, changes)
        if state.deadline is not None:
            self.timers.push(state.deadline, customer)
        self.pending[customer.encode()] = orjson.dumps(dump_state(state, self.engine.fingerprint))

    def deliver(self, rng: random.Random, share: float = 1.0) -> None:
        """Some of the pending states reach the store."""
        for key in [k for k in self.pending if rng.random() < share]:
            self.store.put(key, self.pending.pop(key))

    def recount(self) -> Counter[tuple[str, str]]:
        fresh = JourneyMetrics(JOURNEYS, Metrics(CollectorRegistry()))
        for state in self.states.values():
            fresh.add_state(state)
        return +fresh.open


@pytest.fixture(params=["rocksdb", "memory"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    store = RocksStore(tmp_path) if request.param == "rocksdb" else MemoryStore()
    yield World(store)
    store.close()


@pytest.mark.parametrize("seed", range(6))
def test_changes_during_a_rebuild_are_counted_once(world: World, seed: int) -> None:
    rng = random.Random(seed)
    customers = [f"c{i}" for i in range(300)]
    for c in customers:
        world.touch(c, rng)
    world.deliver(rng, share=0.9)  # a few written just before the rebuild, not stored yet
    rebuild = Rebuild(SimpleNamespace(data=world.store), set(range(PARTITIONS)), PARTITIONS,
                      world.engine, world.metrics, world.timers, pending=world.pending)  # fmt: skip
    rebuild.start()
    while not rebuild.done:
        rebuild.step(seconds=60, most=rng.randint(1, 40))
        # Between slices: customers changed on both sides of the scan, and new ones, whose
        # states reach the store a few slices later (a new key may land behind the scan).
        for c in [*rng.sample(customers, 5), f"new{rng.randint(0, 10**6)}"]:
            if c not in customers:
                customers.append(c)
            world.touch(c, rng)
        world.deliver(rng, share=0.3)
    rebuild.finish()
    assert world.metrics.ahead_of_recount is None
    assert +world.metrics.open == world.recount()
    # Every customer with a drop-off to come has a timer (stale ones only settle in vain).
    pending = {c for c, s in world.states.items() if s.deadline is not None}
    assert pending
    assert pending <= world.timers.due(10**15, 10**6)


def test_only_owned_partitions_are_read(world: World) -> None:
    rng = random.Random(1)
    for i in range(200):
        world.touch(f"c{i}", rng)
    world.deliver(rng)
    ours = {0, 2}
    rebuild = Rebuild(SimpleNamespace(data=world.store), ours, PARTITIONS, world.engine,
                      world.metrics, world.timers)  # fmt: skip
    rebuild.start()
    rebuild.step(seconds=600, most=10**6)
    assert rebuild.done
    mine = {c for c in world.states if partition_of(c.encode(), PARTITIONS) in ours}
    assert rebuild.read == (len(mine) if isinstance(world.store, RocksStore) else 200)
    assert world.timers.due(10**15, 10**6) == {
        c for c in mine if world.states[c].deadline is not None
    }
