"""``tracker bench worker``: one worker against a bare aiokafka consumer on the same topic.

Fills a topic with realistic touchpoint messages (as the collector writes them: one message per
visitor batch), reads it once with a bare aiokafka consumer that JSON-parses every message (the
baseline), then runs one real worker process over it to completion. Every customer opens a
journey instance that stays open, so the worker's memory growth per open instance can be read
off its resident set size.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tracker import readyfile
from tracker.bench.broker import start_kafka
from tracker.kafka.client import ensure_topics
from tracker.settings import Settings

BENCH_JOURNEYS = """
journeys:
  - name: shop
    window: 7d
    stages:
      - {name: browse, match: {event: Product Viewed}, timeout: 7d}
      - {name: cart, match: {event: Product Added}, timeout: 7d}
      - {name: checkout, match: {event: Checkout Started}}
      - {name: purchase, match: {event: Order Completed}}
    pain:
      - {name: slow_page, match: {event: Page Loaded, where: {load_ms: {gt: 3000}}}}
"""
EVENTS = ["Product Viewed", "Page Loaded", "Products Searched", "Product Added", "FAQ Viewed"]


def _record(customer: int, i: int, now_ms: int, rnd: random.Random) -> dict[str, Any]:
    event = "Product Viewed" if i == 0 else rnd.choice(EVENTS[1:])
    t = now_ms - rnd.randint(0, 600_000)
    return {
        "message_id": f"b{customer}-{i}", "type": "track", "event": event,
        "anonymous_id": f"visitor-{customer}", "user_id": "", "previous_id": "", "group_id": "",
        "channel": rnd.choice(["web", "app"]), "source": "bench",
        "timestamp_ms": t, "sent_at_ms": t + 50, "received_at_ms": t + 80, "event_time_ms": t + 30,
        "properties": {"sku": f"SKU-{rnd.randint(1, 5000)}", "load_ms": rnd.randint(200, 4000),
                       "path": f"/p/{rnd.randint(1, 5000)}"},
        "traits": {},
        "context": {"userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0", "locale": "en-GB"},
    }  # fmt: skip


async def fill(bootstrap: str, topic: str, events: int, customers: int, per_message: int) -> int:
    rnd = random.Random(7)
    now_ms = int(time.time() * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1,
                                max_batch_size=1 << 20, max_request_size=8 << 20)  # fmt: skip
    await producer.start()
    messages = 0
    try:
        counters = [0] * customers
        sent = 0
        while sent < events:
            # Every customer opens a journey first, then the rest of the events spread at random.
            c = messages if messages < customers else rnd.randrange(customers)
            n = min(per_message, events - sent)
            batch = [_record(c, counters[c] + k, now_ms, rnd) for k in range(n)]
            counters[c] += n
            await producer.send(topic, orjson.dumps(batch), key=f"visitor-{c}".encode())
            sent += n
            messages += 1
        await producer.flush()
    finally:
        await producer.stop()
    return messages


async def baseline(bootstrap: str, topic: str, events: int) -> float:
    """Events/s of a bare aiokafka consumer that JSON-parses every message."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, max_partition_fetch_bytes=8 << 20,
    )  # fmt: skip
    await consumer.start()
    seen = 0
    began = time.perf_counter()
    try:
        while seen < events:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                for record in records:
                    seen += len(orjson.loads(record.value))
        return seen / (time.perf_counter() - began)
    finally:
        await consumer.stop()


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _metric(url: str, name: str) -> float:
    """The sum of every series of ``name`` on the worker's /metrics."""
    total = 0.0
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _start_worker(
    env: dict[str, str], workdir: Path, name: str
) -> tuple[subprocess.Popen[bytes], str]:
    ready = workdir / f"{name}.ready"
    log = (workdir / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracker.cli", "worker", "--port", "0", "--ready-file", str(ready)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = readyfile.wait(ready, timeout=120, alive=lambda: proc.poll() is None)["url"]
    return proc, url


def run(settings: Settings, *, events: int, customers: int, per_message: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tracker-bench-"))
    kafka, bootstrap = start_kafka(settings, workdir)
    run_id = uuid.uuid4().hex[:8]
    topic = f"bench-touchpoints-{run_id}"
    journeys = workdir / "journeys.yaml"
    journeys.write_text(BENCH_JOURNEYS)
    try:
        asyncio.run(ensure_topics(settings, bootstrap, [topic]))
        began = time.perf_counter()
        messages = asyncio.run(fill(bootstrap, topic, events, customers, per_message))
        expected_open = min(customers, messages)  # every customer's first message opens one
        print(
            f"filled {events} events in {messages} messages in {time.perf_counter() - began:.1f}s"
        )
        base = asyncio.run(baseline(bootstrap, topic, events))
        print(f"baseline: bare aiokafka + orjson {base:,.0f} events/s")

        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
        env.update(TRACKER_KAFKA_BOOTSTRAP=bootstrap, TRACKER_JOURNEYS_FILE=str(journeys),
                   TRACKER_LOG_LEVEL="warning", TRACKER_ALLOWED_LATENESS="1d")  # fmt: skip
        # An idle worker first, on an empty topic: the resident size before any state.
        idle_env = {**env, "TRACKER_DATA_DIR": str(workdir / "idle"),
                    "TRACKER_TOPIC_TOUCHPOINTS": f"bench-empty-{run_id}",
                    "TRACKER_APP_ID": f"bench-idle-{run_id}"}  # fmt: skip
        idle, _ = _start_worker(idle_env, workdir, "idle")
        time.sleep(3)  # settle after start-up; this measures memory, nothing waits on it
        idle_rss = _rss_bytes(idle.pid)
        idle.terminate()
        idle.wait(60)

        env.update(TRACKER_DATA_DIR=str(workdir / "worker"), TRACKER_TOPIC_TOUCHPOINTS=topic,
                   TRACKER_APP_ID=f"bench-{run_id}")  # fmt: skip
        proc, url = _start_worker(env, workdir, "worker")
        began = time.perf_counter()
        while _metric(url, "tracker_worker_events_total") < events:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited; see {workdir / 'worker.log'}")
            time.sleep(0.5)
        seconds = time.perf_counter() - began
        # The last batch's journeys are committed right after its raw rows are counted.
        deadline = time.monotonic() + 60
        while _metric(url, "tracker_journey_open_instances") < expected_open:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        open_instances = round(_metric(url, "tracker_journey_open_instances"))
        rss = _rss_bytes(proc.pid)
        proc.terminate()
        proc.wait(120)
    finally:
        if kafka is not None:
            kafka.stop()
    rate = events / seconds
    result = {
        "events": events,
        "messages": messages,
        "customers": customers,
        "worker_events_per_s": round(rate),
        "baseline_events_per_s": round(base),
        "ratio": round(rate / base, 3),
        "open_instances": open_instances,
        "worker_rss_bytes": rss,
        "idle_rss_bytes": idle_rss,
        "bytes_per_open_instance": round((rss - idle_rss) / max(open_instances, 1)),
        "targets": {"worker_events_per_s": 50_000, "ratio": 0.25, "bytes_per_open_instance": 1024},
    }
    return result
