"""``tracker bench worker``: one worker against a bare aiokafka consumer on the same topic.

Fills a topic with realistic touchpoints shaped as the collector writes them under load: browser
requests of one visitor and relay requests of many customers, the records of every 32 requests
(a linger window) grouped into one message per partition. Reads it once with a bare aiokafka
consumer that JSON-parses every message (the baseline), then runs one real worker process over it
to completion. Every customer opens a journey instance that stays open, so the worker's memory
growth per open instance can be read off its resident set size.

Then, on topics of other shapes (one keyed event per message as the collector wrote before;
windows of 1-event and of 20-event browser requests), it fits the worker's time as
``a*messages + b*customer batches + c*events`` by least squares over every run: what a Kafka
message, a customer's share of a batch and an event each cost.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tracker import readyfile
from tracker.bench.broker import start_kafka
from tracker.collector.linger import partition_batches
from tracker.core.journeys.customers import Customers, StateCache
from tracker.core.journeys.definition import loads
from tracker.core.journeys.engine import JourneyEngine, Touchpoint
from tracker.core.touchpoint import record_key
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


def bench_record(customer: int, i: int, now_ms: int, rnd: random.Random) -> dict[str, Any]:
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


RELAY_BATCH = 100  # events of a server-side relay request, of as many customers
WINDOW_REQUESTS = 32  # requests whose records the collector's linger sends together


@dataclass(frozen=True)
class Shape:
    """How the topic is filled: like the collector writes it now, or one keyed event a message."""

    name: str
    events: int
    customers: int
    per_request: int  # events of one visitor in a browser request
    relay_share: float = 0.3  # of the events, sent by relay requests of RELAY_BATCH customers
    keyed: bool = False  # the old shape: one message per customer key per request


def _requests(shape: Shape, now_ms: int, rnd: random.Random) -> Iterator[list[dict[str, Any]]]:
    """Browser requests (one visitor, ``per_request`` events) and relay requests (many)."""
    counters = [0] * shape.customers
    picked = 0

    def customer() -> int:
        # Every customer opens a journey first, then the rest of the events spread at random.
        nonlocal picked
        picked += 1
        return picked - 1 if picked <= shape.customers else rnd.randrange(shape.customers)

    def events(c: int, n: int) -> list[dict[str, Any]]:
        out = [bench_record(c, counters[c] + k, now_ms, rnd) for k in range(n)]
        counters[c] += n
        return out

    # The odds of a relay request that make ``relay_share`` of the events relayed.
    r, k = shape.relay_share, shape.per_request
    relay_odds = r * k / (RELAY_BATCH * (1 - r) + r * k)
    sent = 0
    while sent < shape.events:
        left = shape.events - sent
        if rnd.random() < relay_odds:
            request = [r for _ in range(min(RELAY_BATCH, left)) for r in events(customer(), 1)]
        else:
            request = events(customer(), min(shape.per_request, left))
        sent += len(request)
        yield request


async def fill(bootstrap: str, topic: str, shape: Shape) -> tuple[int, int]:
    """Write the shape's events: the number of Kafka messages written, and of customers."""
    rnd = random.Random(7)
    now_ms = int(time.time() * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1,
                                max_batch_size=1 << 20, max_request_size=8 << 20)  # fmt: skip
    await producer.start()
    messages = 0
    customers: set[str] = set()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        window: list[dict[str, Any]] = []
        for n, request in enumerate(_requests(shape, now_ms, rnd), 1):
            customers.update(record_key(record) for record in request)
            if shape.keyed:
                by_key: dict[str, list[dict[str, Any]]] = {}
                for record in request:
                    by_key.setdefault(record_key(record), []).append(record)
                for key, group in by_key.items():
                    await producer.send(topic, orjson.dumps(group), key=key.encode())
                messages += len(by_key)
                continue
            window += request
            if n % WINDOW_REQUESTS == 0:
                messages += await _send_window(producer, topic, window, partitions)
                window = []
        messages += await _send_window(producer, topic, window, partitions)
        await producer.flush()
    finally:
        await producer.stop()
    return messages, len(customers)


async def _send_window(
    producer: AIOKafkaProducer, topic: str, records: list[dict[str, Any]], partitions: list[int]
) -> int:
    """One linger window, as the collector sends it."""
    batches = partition_batches(records, partitions)
    for partition, value in batches:
        await producer.send(topic, value, partition=partition)
    return len(batches)


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


EVENTS_METRIC = "tracker_worker_events_total"
OPEN_METRIC = "tracker_journey_open_instances"
BATCHES_METRIC = "tracker_worker_customer_batches_total"
ASSIGNED_METRIC = "tracker_worker_assigned_partitions"
# Between scrapes of the worker's /metrics while it works: a scrape costs the worker ~15 ms of
# its loop (6% of a run at four a second), so the bench asks rarely while much is left and often
# near the end, where the finishing time is read.
POLL_MIN_SECONDS = 0.05
POLL_MAX_SECONDS = 2.0


def _poll_interval(done: float, total: float, elapsed: float) -> float:
    """A quarter of the time the rest should take at the rate so far, within the bounds."""
    if done <= 0 or done >= total:
        return POLL_MIN_SECONDS
    left = (total - done) * elapsed / done
    return min(POLL_MAX_SECONDS, max(POLL_MIN_SECONDS, left / 4))


def _metrics(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """The sum of every series of each of ``names`` on the worker's /metrics."""
    totals = dict.fromkeys(names, 0.0)
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in totals:
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


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


@dataclass
class Measured:
    """One worker process over one filled topic, from its first consumed event to the last."""

    shape: Shape
    messages: int
    customers_seen: int
    baseline_per_s: float
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    customer_batches: int = 0
    open_instances: int = 0
    rss_bytes: int = 0
    # The resident size when half the customers' instances were open: the growth from there to
    # the end is per instance, whatever the process holds at a fixed size.
    half_open_instances: int = 0
    half_rss_bytes: int = 0

    @property
    def bytes_per_added_instance(self) -> float | None:
        added = self.open_instances - self.half_open_instances
        if not self.half_rss_bytes or added <= 0:
            return None
        return (self.rss_bytes - self.half_rss_bytes) / added

    @property
    def per_s(self) -> float:
        return self.shape.events / self.seconds


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(
    settings: Settings, shape: Shape, bootstrap: str, env: dict[str, str], workdir: Path
) -> Measured:
    run_id = env["TRACKER_APP_ID"]
    topic = f"{run_id}-{shape.name}"
    asyncio.run(ensure_topics(settings, bootstrap, [topic]))
    began = time.perf_counter()
    messages, customers_seen = asyncio.run(fill(bootstrap, topic, shape))
    base = asyncio.run(baseline(bootstrap, topic, shape.events))
    run = Measured(shape, messages, customers_seen, base)
    print(
        f"{shape.name}: {shape.events:,} events in {messages:,} messages "
        f"({shape.events / messages:.1f} events/message), filled in "
        f"{time.perf_counter() - began:.1f}s; bare aiokafka + orjson {base:,.0f} events/s",
        flush=True,
    )
    env = {**env, "TRACKER_DATA_DIR": str(workdir / shape.name),
           "TRACKER_TOPIC_TOUCHPOINTS": topic, "TRACKER_APP_ID": topic}  # fmt: skip
    proc, url = _start_worker(env, workdir, shape.name)
    try:

        def poll() -> dict[str, float]:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the worker exited; see {workdir / (shape.name + '.log')}")
                try:
                    return _metrics(
                        url, (EVENTS_METRIC, OPEN_METRIC, BATCHES_METRIC, ASSIGNED_METRIC)
                    )
                except (TimeoutError, urllib.error.URLError):
                    continue  # a busy worker answers /metrics late: ask again

        # The clock starts when the worker owns its partitions: its first fetch may already
        # hold the whole topic, so "first event counted" would miss the first batch.
        while poll()[ASSIGNED_METRIC] == 0:
            time.sleep(0.01)
        began, cpu = time.perf_counter(), _cpu_seconds(proc.pid)
        # Done when every event is counted and every customer's journey is open (the journeys of
        # a batch are applied right after its events are counted).
        events_done: float | None = None
        cpu_done = cpu
        while True:
            seen = poll()
            now = time.perf_counter()
            if not run.half_rss_bytes and seen[OPEN_METRIC] >= customers_seen / 2:
                run.half_open_instances = round(seen[OPEN_METRIC])
                run.half_rss_bytes = _rss_bytes(proc.pid)
            if seen[EVENTS_METRIC] >= shape.events:
                if events_done is None:
                    events_done, cpu_done = now, _cpu_seconds(proc.pid)
                if seen[OPEN_METRIC] >= customers_seen or now - events_done > 60:
                    break
            time.sleep(_poll_interval(seen[EVENTS_METRIC], shape.events, now - began))
        # Ended by the open instances, or else by the events (then not the minute waited after).
        if seen[OPEN_METRIC] >= customers_seen:
            run.seconds, run.cpu_seconds = now - began, _cpu_seconds(proc.pid) - cpu
        else:
            run.seconds, run.cpu_seconds = events_done - began, cpu_done - cpu
        run.customer_batches = round(seen[BATCHES_METRIC])
        run.open_instances = round(seen[OPEN_METRIC])
        run.rss_bytes = _rss_bytes(proc.pid)
    finally:
        proc.terminate()
        proc.wait(120)
    print(
        f"{shape.name}: worker {run.per_s:,.0f} events/s ({run.per_s / base:.3f} of bare) in "
        f"{run.seconds:.1f}s, CPU {run.cpu_seconds / run.seconds:.2f} of wall "
        f"({shape.events / run.cpu_seconds:,.0f} events per CPU second), "
        f"{run.customer_batches:,} customer batches, {run.open_instances:,} open instances",
        flush=True,
    )
    print(
        f"{shape.name}: worker RSS {run.rss_bytes / 2**20:,.1f} MiB at {run.open_instances:,} open "
        f"instances, {run.half_rss_bytes / 2**20:,.1f} MiB at {run.half_open_instances:,}",
        flush=True,
    )
    return run


def fit(runs: list[Measured], seconds: list[float]) -> tuple[float, float, float]:
    """Least squares of seconds = a·messages + b·customer batches + c·events over the runs."""
    rows = [(float(r.messages), float(r.customer_batches), float(r.shape.events)) for r in runs]
    gram = [[sum(x[i] * x[j] for x in rows) for j in range(3)] for i in range(3)]
    rhs = [sum(x[i] * t for x, t in zip(rows, seconds, strict=True)) for i in range(3)]
    a, b, c = _solve(gram, rhs)
    return a, b, c


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (three unknowns: numpy is not a dependency)."""
    n = len(rhs)
    m = [[*row, v] for row, v in zip(matrix, rhs, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if m[pivot][col] == 0:
            raise ValueError("the runs do not separate the cost terms: vary their shapes")
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [v - f * p for v, p in zip(m[r], m[col], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]


def model_report(runs: list[Measured]) -> dict[str, Any]:
    """The cost model fitted to the worker's wall time and, apart, to its CPU time (on a shared
    machine the wall time also holds the time it waited for a core)."""
    report: dict[str, Any] = {}
    for measure in ("wall", "cpu"):
        seconds = [r.seconds if measure == "wall" else r.cpu_seconds for r in runs]
        a, b, c = fit(runs, seconds)
        print(
            f"cost model ({measure} seconds) over {len(runs)} runs: a*messages + b*customer batches"
            f" + c*events\n  a = {a * 1e6:.1f} us per message, b = {b * 1e6:.1f} us per customer"
            f" batch, c = {c * 1e6:.1f} us per event"
        )
        print(
            f"  {'run':<10} {'events':>9} {'messages':>9} {'batches':>9} {'measured s':>10} "
            f"{'predicted s':>11} {'msg%':>5} {'batch%':>6} {'event%':>6}"
        )
        per_run = []
        for r, t in zip(runs, seconds, strict=True):
            terms = (a * r.messages, b * r.customer_batches, c * r.shape.events)
            predicted = sum(terms)
            shares = [round(100 * term / predicted) for term in terms]
            print(
                f"  {r.shape.name:<10} {r.shape.events:>9,} {r.messages:>9,} "
                f"{r.customer_batches:>9,} {t:>10.2f} {predicted:>11.2f} {shares[0]:>5} "
                f"{shares[1]:>6} {shares[2]:>6}"
            )
            per_run.append({"run": r.shape.name, "measured_s": round(t, 3),
                            "predicted_s": round(predicted, 3), "shares_pct": shares})  # fmt: skip
        report[measure] = {"us_per_message": round(a * 1e6, 1),
                           "us_per_customer_batch": round(b * 1e6, 1),
                           "us_per_event": round(c * 1e6, 1), "runs": per_run}  # fmt: skip
    return report


CORE_BATCH_EVENTS = 5_000  # about what the worker's half-second batches hold in the main run


def core_alone(settings: Settings, shape: Shape) -> dict[str, Any]:
    """The journey core alone over ``shape``'s records, in this process: each record to a
    touchpoint with its rule bits, grouped by customer, ``Customers.touchpoints`` and
    ``commit`` per batch of :data:`CORE_BATCH_EVENTS`, the states kept in a dict. That is the
    worker's per-event and per-customer Python work without Kafka, faust, RocksDB or ClickHouse:
    the most a worker process running this core can do on this machine. The garbage collector
    runs as in the worker (``streams.collection``): paused within a batch, young collections
    only a million objects apart, what exists before the clock starts set aside."""
    from streams import collection
    from streams.journeys import STATES_CACHED  # the worker's cache of states as objects

    engine = JourneyEngine(
        loads(BENCH_JOURNEYS),
        lateness_ms=86_400_000,  # as the worker runs here (TRACKER_ALLOWED_LATENESS=1d)
        max_live_touchpoints=settings.journey_max_live_touchpoints,
        max_state_bytes=settings.journey_max_state_bytes,
    )
    now_ms = int(time.time() * 1000)
    records = [r for request in _requests(shape, now_ms, random.Random(7)) for r in request]
    stored: dict[str, bytes] = {}
    core = Customers(engine, state_bytes=stored.get, device_bytes=lambda _: None,
                     owner_of=lambda _: None, cache=StateCache(STATES_CACHED))  # fmt: skip
    batches = 0
    thresholds = gc.get_threshold()
    gc.collect()
    collection.tune_gc()
    began = time.process_time()
    try:
        for i in range(0, len(records), CORE_BATCH_EVENTS):
            with collection.paused():
                by_device: dict[str, list[Touchpoint]] = {}
                for record in records[i : i + CORE_BATCH_EVENTS]:
                    tp = Touchpoint.from_record(record)
                    tp.bits = engine.signature(tp)
                    by_device.setdefault(record["anonymous_id"], []).append(tp)
                core.touchpoints(list(by_device.items()), {}, now_ms)
                effects = core.commit()
                stored.update(effects.states)
                batches += effects.customer_batches
        seconds = time.process_time() - began
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    return {"events_per_cpu_s": round(len(records) / seconds), "customer_batches": batches}


def model_shapes(events: int) -> list[Shape]:
    """Runs that vary messages per event (old keyed shape vs linger) and batches per event (k)."""
    customers = max(1, events // 4)
    # The old shape is the slowest by far: a fifth of the events tell its costs as well.
    return [
        Shape("keyed-1", events // 5, customers // 5, per_request=1, keyed=True),
        Shape("linger-1", events, customers, per_request=1),
        Shape("linger-20", events, customers, per_request=20),
    ]


def run(
    settings: Settings, *, events: int, customers: int, per_request: int, model_events: int
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tracker-bench-"))
    kafka, bootstrap = start_kafka(settings, workdir)
    run_id = uuid.uuid4().hex[:8]
    journeys = workdir / "journeys.yaml"
    journeys.write_text(BENCH_JOURNEYS)
    main = Shape("main", events, customers, per_request)
    try:
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
        print(f"idle worker RSS {idle_rss / 2**20:,.1f} MiB", flush=True)
        idle.terminate()
        idle.wait(60)
        env["TRACKER_APP_ID"] = f"bench-{run_id}"
        shapes = [main, *(model_shapes(model_events) if model_events else [])]
        runs = [_measure(settings, shape, bootstrap, env, workdir) for shape in shapes]
    finally:
        if kafka is not None:
            kafka.stop()
    first = runs[0]
    result: dict[str, Any] = {
        "events": events,
        "messages": first.messages,
        "customers": customers,
        "per_request": per_request,
        "worker_events_per_s": round(first.per_s),
        "baseline_events_per_s": round(first.baseline_per_s),
        "ratio": round(first.per_s / first.baseline_per_s, 3),
        "worker_cpu_per_wall": round(first.cpu_seconds / first.seconds, 2),
        # On a shared machine the worker may get a fraction of a core: what one core would do.
        "worker_events_per_cpu_s": round(events / first.cpu_seconds),
        "open_instances": first.open_instances,
        "worker_rss_bytes": first.rss_bytes,
        "idle_rss_bytes": idle_rss,
        "bytes_per_open_instance": round(
            (first.rss_bytes - idle_rss) / max(first.open_instances, 1)
        ),
        "half_open_instances": first.half_open_instances,
        "half_rss_bytes": first.half_rss_bytes,
        "bytes_per_added_instance": (
            None if (added := first.bytes_per_added_instance) is None else round(added)
        ),
        "targets": {"worker_events_per_s": 25_000, "ratio": 0.1, "bytes_per_open_instance": 1024},
        "runs": [
            {
                "run": r.shape.name,
                "events": r.shape.events,
                "messages": r.messages,
                "customer_batches": r.customer_batches,
                "seconds": round(r.seconds, 3),
                "worker_events_per_s": round(r.per_s),
                "baseline_events_per_s": round(r.baseline_per_s),
                "cpu_per_wall": round(r.cpu_seconds / r.seconds, 2),
            }
            for r in runs
        ],
    }
    result["core_alone"] = core = core_alone(settings, main)
    print(f"journey core alone: {core['events_per_cpu_s']:,} events per CPU second "
          f"({core['customer_batches']:,} customer batches)", flush=True)  # fmt: skip
    if len(runs) >= 3:
        result["model"] = model_report(runs)
    return result
