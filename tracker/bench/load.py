"""The load generator of ``tracker bench collector``, run as its own process.

``python -m tracker.bench.load SPEC_JSON`` runs the phases the spec names against a collector and
a Kafka topic and prints one JSON object of figures. It shares no process (and so no CPU time
slices of its event loop) with the collector it measures.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer

from tracker.collector.publisher import PRODUCER_OPTIONS

PAGES = ["/", "/c/shoes", "/c/shoes/running", "/p/air-glide-42", "/cart", "/checkout", "/help"]
EVENTS = ["Product Viewed", "Product Added", "Products Searched", "Checkout Started", "Page Loaded"]
AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari"


class Batches:
    """Realistic browser batches: one visitor's page views and track events, unique ids.

    A few hundred batches are built up front; each one sent is a copy with fresh message ids
    (a fixed-width counter patched into the bytes), so the generator spends its time sending.
    """

    TEMPLATES = 256
    SLOT = b"#########"  # nine characters of counter in every message id of a template

    def __init__(self, size: int, seed: int = 11) -> None:
        self.size = size
        self.rnd = random.Random(seed)
        self.run = uuid.uuid4().hex[:8]
        self.count = 0
        self.templates = [self._template() for _ in range(self.TEMPLATES)]

    def _template(self) -> tuple[str, bytes, bytes]:
        rnd = self.rnd
        visitor = f"anon-{self.run}-{rnd.randrange(1_000_000)}"
        base = int(time.time() * 1000) - 2000
        events = []
        for i in range(self.size):
            path = rnd.choice(PAGES)
            event: dict[str, Any] = {
                "messageId": f"{self.run}-{self.SLOT.decode()}-{i}",
                "anonymousId": visitor,
                "timestamp": _iso(base + i * 50),
                "context": {
                    "userAgent": AGENT, "locale": "en-GB", "library": {"name": "analytics.js",
                    "version": "5.2.0"}, "page": {"path": path, "referrer": "https://search.example/",
                    "url": f"https://shop.example{path}"}, "screen": {"width": 1440, "height": 900},
                },
            }  # fmt: skip
            if i % 3 == 0:
                event.update(type="page", name=path, properties={"path": path, "title": "Shop"})
            else:
                event.update(type="track", event=rnd.choice(EVENTS), properties={
                    "sku": f"SKU-{rnd.randrange(5000)}", "price": round(rnd.uniform(5, 200), 2),
                    "currency": "GBP", "load_ms": rnd.randrange(200, 4000)})  # fmt: skip
            events.append(event)
        body = orjson.dumps({"batch": events, "sentAt": _iso(base + self.size * 50)})
        return visitor, orjson.dumps(events), body

    def _stamp(self) -> tuple[int, bytes]:
        self.count += 1
        return self.count % self.TEMPLATES, b"%09d" % self.count

    def next(self) -> tuple[str, bytes]:
        """A visitor and its events as one JSON array (what a bare producer would send)."""
        index, stamp = self._stamp()
        visitor, events, _ = self.templates[index]
        return visitor, events.replace(self.SLOT, stamp)

    def body(self) -> bytes:
        """A ``/v1/batch`` request body."""
        index, stamp = self._stamp()
        return self.templates[index][2].replace(self.SLOT, stamp)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> bool:
    headers = {"Content-Type": "application/json"}
    async with session.post(url, data=body, headers=headers) as response:
        await response.read()
        return response.status == 200


def _session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=60),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def max_throughput(url: str, batches: Batches, seconds: float, connections: int) -> dict:
    """Closed loop: ``connections`` senders, each sends its next batch once the last is answered."""
    ok = failed = 0
    async with _session(connections) as session:
        deadline = time.monotonic() + seconds

        async def sender() -> None:
            nonlocal ok, failed
            while time.monotonic() < deadline:
                try:
                    accepted = await _post(session, url, batches.body())
                except (aiohttp.ClientError, TimeoutError):
                    accepted = False
                ok, failed = (ok + 1, failed) if accepted else (ok, failed + 1)

        began = time.monotonic()
        await asyncio.gather(*(sender() for _ in range(connections)))
        elapsed = time.monotonic() - began
    return {"events_per_s": round(ok * batches.size / elapsed), "requests": ok + failed,
            "failed": failed, "seconds": round(elapsed, 2)}  # fmt: skip


async def fixed_rate(
    url: str, batches: Batches, seconds: float, per_s: float, connections: int
) -> dict:
    """Open loop: a batch every ``1/per_s`` seconds whether or not earlier ones were answered.

    Latency counts from when a request was due, so a stall shows in every request it delayed.
    """
    latencies: list[float] = []
    failed = 0
    loop = asyncio.get_running_loop()
    async with _session(connections) as session:

        async def one(due: float) -> None:
            nonlocal failed
            try:
                if not await _post(session, url, batches.body()):
                    failed += 1
            except (aiohttp.ClientError, TimeoutError):
                failed += 1
            latencies.append(loop.time() - due)

        tasks = set()
        start = loop.time() + 0.05
        total = int(seconds * per_s)
        for i in range(total):
            due = start + i / per_s
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elapsed = loop.time() - start
        if tasks:
            await asyncio.wait(tasks, timeout=60)
    return {"offered_events_per_s": round(per_s * batches.size),
            "achieved_events_per_s": round(total * batches.size / max(elapsed, 1e-9)),
            "requests": total, "failed": failed,
            "p50_s": round(_percentile(latencies, 0.50), 5),
            "p99_s": round(_percentile(latencies, 0.99), 5),
            "max_s": round(max(latencies, default=0.0), 5)}  # fmt: skip


async def bare_producer(bootstrap: str, topic: str, batches: Batches, seconds: float,
                        concurrency: int) -> dict:  # fmt: skip
    """The same batches straight to Kafka: one message per batch (one visitor), acks=all, with
    the collector's own producer options."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **PRODUCER_OPTIONS)
    await producer.start()
    sent = 0
    try:
        deadline = time.monotonic() + seconds

        async def sender() -> None:
            nonlocal sent
            while time.monotonic() < deadline:
                visitor, value = batches.next()
                future = await producer.send(topic, value, key=visitor.encode())
                await future
                sent += 1

        began = time.monotonic()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
    finally:
        await producer.stop()
    return {"events_per_s": round(sent * batches.size / elapsed), "seconds": round(elapsed, 2)}


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    url, size, seconds = spec["url"] + "/v1/batch", spec["batch"], spec["seconds"]
    batches = Batches(size)
    await max_throughput(url, batches, min(2.0, seconds), spec["connections"])  # warm-up
    out: dict[str, Any] = {}
    out["max"] = await max_throughput(url, batches, seconds, spec["connections"])
    per_s = spec["rate"] / size
    out["fixed"] = await fixed_rate(url, batches, seconds, per_s, spec["open_connections"])
    out["baseline"] = await bare_producer(
        spec["bootstrap"], spec["baseline_topic"], batches, seconds, spec["connections"]
    )
    return out


def main(argv: list[str]) -> int:
    spec = orjson.loads(argv[1])
    print(orjson.dumps(asyncio.run(run(spec))).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
