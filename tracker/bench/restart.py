"""``tracker bench restart``: how long a restarted worker takes to write new events.

The customers table's changelog is filled with the states of N customers (each one open journey
instance, as the worker itself stores them), then one worker with RocksDB tables starts, reads
it all into its local store and stops. Then, each time with a new touchpoint waiting on the
touchpoints topic, a worker starts and the clock runs from its process start until that
touchpoint's row is in the warehouse (and until the journey result it opens is):

- baseline: tables in memory, which read the whole changelog before anything else;
- value: the RocksDB worker again, on its own data directory, which reads only the tail.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from tracker import readyfile
from tracker.bench.broker import start_kafka
from tracker.bench.worker import BENCH_JOURNEYS
from tracker.core.journeys.codec import dump_state
from tracker.core.journeys.definition import loads
from tracker.core.journeys.engine import CustomerState, JourneyEngine, Touchpoint
from tracker.kafka.client import ensure_topics
from tracker.settings import Settings

TARGET_SECONDS = 10.0  # at 1,000,000 customers of state
PLACEHOLDER = "cust-PLACEHOLDER"


def state_template(now_ms: int) -> bytes:
    """One customer's stored state, with PLACEHOLDER where the customer's id goes."""
    engine = JourneyEngine(loads(BENCH_JOURNEYS), lateness_ms=86_400_000)
    state = CustomerState(PLACEHOLDER)
    tps = [
        Touchpoint(now_ms - 60_000, f"{PLACEHOLDER}-1", "track", "Product Viewed", "web",
                   "/p/1", {}),
        Touchpoint(now_ms - 30_000, f"{PLACEHOLDER}-2", "track", "Page Loaded", "web",
                   "/p/1", {"load_ms": 4200}),
    ]  # fmt: skip
    engine.add(state, tps)
    engine.settle(state, now_ms)
    return orjson.dumps(dump_state(state, engine.fingerprint))


async def fill_states(bootstrap: str, topic: str, customers: int) -> None:
    template = state_template(int(time.time() * 1000))
    marker = PLACEHOLDER.encode()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1,
                                max_batch_size=1 << 20, max_request_size=8 << 20)  # fmt: skip
    await producer.start()
    try:
        for c in range(customers):
            key = f"cust-{c}".encode()
            await producer.send(topic, template.replace(marker, key), key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def send_probe(bootstrap: str, topic: str, customer: str) -> None:
    t = int(time.time() * 1000)
    record = {
        "message_id": f"{customer}-1", "type": "track", "event": "Product Viewed",
        "anonymous_id": customer, "user_id": "", "previous_id": "", "group_id": "",
        "channel": "web", "source": "bench", "timestamp_ms": t, "sent_at_ms": t,
        "received_at_ms": t, "event_time_ms": t, "properties": {}, "traits": {}, "context": {},
    }  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, orjson.dumps([record]), key=customer.encode())
    finally:
        await producer.stop()


def _count(url: str, sql: str) -> int:
    req = urllib.request.Request(f"{url}/query", data=sql.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return int(orjson.loads(resp.read())["rows"][0][0])


def timed_start(
    env: dict[str, str], workdir: Path, name: str, probe: str, timeout: float
) -> dict[str, float]:
    """Start a worker; seconds until it listens, writes ``probe``'s row, and its journey."""
    ready = workdir / f"{name}.ready"
    log = (workdir / f"{name}.log").open("wb")
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracker.cli", "worker", "--port", "0", "--ready-file", str(ready)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = readyfile.wait(ready, timeout=timeout, alive=lambda: proc.poll() is None)["url"]
        out = {"listening_s": time.perf_counter() - began}
        checks = {
            "raw_row_s": f"SELECT count() FROM tracker.touchpoints WHERE anonymous_id = '{probe}'",
            "journey_s": f"SELECT count() FROM tracker.journey_results WHERE customer = '{probe}'",
        }
        deadline = time.monotonic() + timeout
        while checks:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} wrote nothing in time; see {log.name}")
            for figure, sql in list(checks.items()):
                if _count(url, sql):
                    out[figure] = time.perf_counter() - began
                    del checks[figure]
            time.sleep(0.05)
        return {k: round(v, 2) for k, v in out.items()}
    finally:
        proc.terminate()
        proc.wait(180)
        log.close()


def run(
    settings: Settings, *, customers: int, timeout: float = 900.0, baseline: bool = True
) -> dict[str, Any]:
    """``baseline=False`` leaves out the in-memory start (the whole changelog replayed), which
    takes many minutes at a million customers."""
    workdir = Path(tempfile.mkdtemp(prefix="tracker-bench-restart-"))
    kafka, bootstrap = start_kafka(settings, workdir)
    run_id = uuid.uuid4().hex[:8]
    app_id = f"bench-restart-{run_id}"
    topic = f"bench-touchpoints-{run_id}"
    journeys = workdir / "journeys.yaml"
    journeys.write_text(BENCH_JOURNEYS)
    try:
        changelog = f"{app_id}-customers-changelog"
        asyncio.run(ensure_topics(settings, bootstrap, [topic, changelog]))
        began = time.perf_counter()
        asyncio.run(fill_states(bootstrap, changelog, customers))
        seconds = time.perf_counter() - began
        print(f"{customers:,} customer states in the changelog in {seconds:.1f}s")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
        env.update(TRACKER_KAFKA_BOOTSTRAP=bootstrap, TRACKER_JOURNEYS_FILE=str(journeys),
                   TRACKER_LOG_LEVEL="warning", TRACKER_ALLOWED_LATENESS="1d",
                   TRACKER_TOPIC_TOUCHPOINTS=topic, TRACKER_APP_ID=app_id)  # fmt: skip
        rocks = {**env, "TRACKER_WORKER_STORE": "rocksdb", "TRACKER_DATA_DIR": str(workdir / "r")}
        memory = {**env, "TRACKER_WORKER_STORE": "memory", "TRACKER_DATA_DIR": str(workdir / "m")}
        runs = {}
        starts = [("first", rocks), ("memory", memory), ("restart", rocks)]
        for name, worker_env in starts if baseline else [starts[0], starts[2]]:
            probe = f"probe-{name}"
            asyncio.run(send_probe(bootstrap, topic, probe))
            runs[name] = timed_start(worker_env, workdir, name, probe, timeout)
            print(f"{name}: {runs[name]}")
    finally:
        if kafka is not None:
            kafka.stop()
    value = runs["restart"]["raw_row_s"]
    base = runs["memory"]["raw_row_s"] if baseline else None
    return {
        "customers": customers,
        "restart": runs["restart"],
        "memory": runs.get("memory", {}),
        "first_start": runs["first"],
        "restart_s": value,
        "baseline_s": base,
        "ratio": round(value / base, 3) if base else None,
        "target_s": TARGET_SECONDS,
    }
