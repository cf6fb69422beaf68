"""``tracker bench identity``: how many identity links per second the identity agent handles.

Every worker sends the identity links of its touchpoints (anonymousId -> userId, aliases) to one
topic with a single partition, ``<app>-identity-links``, read by one identity agent: its ceiling
is the ceiling of logins the whole deployment can take, however many workers it runs.

One worker is started on an empty touchpoints topic; when it owns its partitions, link messages
are written straight to its links topic, shaped as the workers write them (up to 500 links a
message), in two rounds, each timed from the first message written until the worker's consumer
group has committed the last one:

- new pairs: each link a device logging in to its user for the first time (a new device in the
  identity graph, a device notice to the journeys);
- repeats: every pair once more, later (what a logged-in user's next events send).

The baseline is a bare aiokafka consumer that reads and JSON-parses the same messages.

Beside it, in this process, what a login costs the journey core on the device's partition:
the device notice that moves a device's anonymous touchpoints to its user, for devices that
sent 5, 20 and 100 of them first (:func:`login_moves`).
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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tracker import readyfile
from tracker.bench.broker import start_kafka
from tracker.bench.worker import BENCH_JOURNEYS, bench_record
from tracker.core.journeys.customers import Customers, StateCache
from tracker.core.journeys.definition import loads
from tracker.core.journeys.engine import JourneyEngine, Touchpoint
from tracker.kafka.client import ensure_topics
from tracker.settings import Settings

LINKS_PER_MESSAGE = 500  # as the workers send them (streams/journeys.py)


def link_messages(links: int, *, repeat: bool, now_ms: int) -> list[bytes]:
    """Messages of ``links`` links, device i to user i: first logins, or their repeats."""
    t = now_ms + (1_000 if repeat else 0)
    tag = "r" if repeat else "n"
    rows = [[f"anon-{i}", f"user-{i}", t, f"{tag}-{i}", False] for i in range(links)]
    return [
        orjson.dumps(rows[i : i + LINKS_PER_MESSAGE]) for i in range(0, links, LINKS_PER_MESSAGE)
    ]


async def send_and_wait_committed(
    bootstrap: str, topic: str, group: str, messages: list[bytes], within: float
) -> float:
    """Seconds from the first message written until ``group`` committed past the last one."""
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1,
                                max_batch_size=1 << 20, max_request_size=8 << 20)  # fmt: skip
    watcher = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                               enable_auto_commit=False)  # fmt: skip
    await producer.start()
    await watcher.start()
    try:
        began = time.perf_counter()
        last = None
        for value in messages:
            last = await producer.send(topic, value, key=b"links", partition=0)
        assert last is not None
        end = (await last).offset + 1
        deadline = time.monotonic() + within
        while (await watcher.committed(tp) or 0) < end:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not get through {topic} in {within}s")
            await asyncio.sleep(0.05)
        return time.perf_counter() - began
    finally:
        await producer.stop()
        await watcher.stop()


async def baseline(bootstrap: str, topic: str, messages: int) -> float:
    """Seconds for a bare consumer to read and parse ``messages`` messages of the topic."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        began = time.perf_counter()
        seen = 0
        while seen < messages:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    orjson.loads(record.value)
                    seen += 1
        return time.perf_counter() - began
    finally:
        await consumer.stop()


def login_moves(sizes: tuple[int, ...] = (5, 20, 100), logins: int = 200) -> dict[int, float]:
    """Microseconds of the journey core per login, by the anonymous touchpoints the device sent
    before it: the device notice handled and its effects made (``Customers.journey_input`` and
    ``commit``), the device's states and entries held in memory."""
    engine = JourneyEngine(loads(BENCH_JOURNEYS), lateness_ms=86_400_000)
    now = int(time.time() * 1000)
    rnd = random.Random(5)
    out = {}
    for n in sizes:
        spent = 0.0
        for i in range(logins):
            stored: dict[str, bytes] = {}
            devices: dict[str, bytes] = {}
            core = Customers(engine, state_bytes=stored.get, device_bytes=devices.get,
                             owner_of=lambda _: None, cache=StateCache(10))  # fmt: skip
            tps = [Touchpoint.from_record(bench_record(i, k, now, rnd)) for k in range(n)]
            for tp in tps:
                tp.bits = engine.signature(tp)
            device = f"visitor-{i}"
            core.touchpoints([], {device: tps}, now)
            stored.update(core.commit().states)
            notice = {"kind": "device", "links": [[now - 3_600_000, "i", "u"]], "shared": False}
            began = time.perf_counter()
            core.journey_input([(device, notice)], now)
            core.commit()
            spent += time.perf_counter() - began
        out[n] = round(spent / logins * 1e6, 1)
    return out


def _assigned(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("tracker_worker_assigned_partitions "):
                return float(line.split()[1]) > 0
    return False


def run(settings: Settings, *, links: int, timeout: float = 600.0) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tracker-bench-identity-"))
    kafka, bootstrap = start_kafka(settings, workdir)
    run_id = uuid.uuid4().hex[:8]
    app_id = f"bench-identity-{run_id}"
    links_topic = f"{app_id}-identity-links"
    touchpoints = f"bench-touchpoints-{run_id}"
    journeys = workdir / "journeys.yaml"
    journeys.write_text(BENCH_JOURNEYS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env.update(TRACKER_KAFKA_BOOTSTRAP=bootstrap, TRACKER_JOURNEYS_FILE=str(journeys),
               TRACKER_LOG_LEVEL="warning", TRACKER_TOPIC_TOUCHPOINTS=touchpoints,
               TRACKER_APP_ID=app_id, TRACKER_DATA_DIR=str(workdir / "worker"))  # fmt: skip
    proc = None
    log = (workdir / "worker.log").open("wb")
    try:
        asyncio.run(ensure_topics(settings, bootstrap, [touchpoints]))
        ready = workdir / "worker.ready"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tracker.cli", "worker", "--port", "0",
             "--ready-file", str(ready)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = readyfile.wait(ready, timeout=120, alive=lambda: proc.poll() is None)["url"]
        deadline = time.monotonic() + 120
        while not _assigned(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker owns no partition; see {log.name}")
            time.sleep(0.2)
        now = int(time.time() * 1000)
        seconds = {}
        for name, repeat in (("new_pairs", False), ("repeats", True)):
            messages = link_messages(links, repeat=repeat, now_ms=now)
            seconds[name] = asyncio.run(
                send_and_wait_committed(bootstrap, links_topic, app_id, messages, timeout)
            )
            print(f"{name}: {links:,} links in {seconds[name]:.2f}s")
        base = asyncio.run(baseline(bootstrap, links_topic, 2 * len(messages)))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(120)
        log.close()
        if kafka is not None:
            kafka.stop()
    moves = login_moves()
    for n, us in moves.items():
        print(f"journey core: a login moving {n} anonymous touchpoints: {us:,.1f} us")
    new_rate, repeat_rate = links / seconds["new_pairs"], links / seconds["repeats"]
    base_rate = 2 * links / base
    return {
        "links": links,
        "new_pair_links_per_s": round(new_rate),
        "repeat_links_per_s": round(repeat_rate),
        "new_pair_us_per_link": round(1e6 / new_rate, 1),
        "repeat_us_per_link": round(1e6 / repeat_rate, 1),
        "baseline_links_per_s": round(base_rate),
        "new_pair_ratio": round(new_rate / base_rate, 3),
        "repeat_ratio": round(repeat_rate / base_rate, 3),
        "login_us_by_anonymous_touchpoints": moves,
    }
