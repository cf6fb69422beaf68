"""Send simulated deliveries to a collector's ``POST /v1/batch``, as SDKs do, and never lose one.

``429`` and ``503`` are answered by waiting ``Retry-After`` and sending the same batch again;
connection errors, timeouts and other 5xx by capped exponential backoff. Every attempt stamps a
fresh ``sentAt`` (the collector corrects clock skew with it). A 4xx other than 429 means the
simulator sent something the API does not take: that stops the run with the collector's answer.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

from tracker.errors import TrackerError
from tracker.simulate.generate import Touch, iso, wire_message

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 30.0
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 5.0


class SimulationError(TrackerError):
    pass


@dataclass
class SendStats:
    requests: int = 0
    accepted: int = 0  # messages in batches the collector acknowledged
    retries: int = 0
    throttled: int = 0  # 429 and 503 answers
    latencies: list[float] = field(default_factory=list)  # seconds per acknowledged request


class Sender:
    def __init__(
        self,
        url: str,
        write_key: str,
        *,
        start_ms: int,
        concurrency: int = 16,
        timeout: float = 10.0,
        give_up_after: float = 300.0,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/v1/batch"
        token = base64.b64encode(f"{write_key}:".encode()).decode()
        self.headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}"}
        self.start_ms = start_ms
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.give_up_after = give_up_after
        self.stats = SendStats()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures: list[BaseException] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Sender:
        self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def submit(self, touches: list[Touch]) -> None:
        """Send in the background; waits only while ``concurrency`` requests are in flight."""
        if self._failures:
            raise self._failures[0]
        await self._slots.acquire()
        task = asyncio.create_task(self._send(touches))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            self._failures.append(task.exception())  # type: ignore[arg-type]

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._failures:
            raise self._failures[0]

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def _send(self, touches: list[Touch]) -> None:
        assert self._session is not None
        began = time.monotonic()
        backoff = BACKOFF_START_S
        while True:
            sent_ms = int(time.time() * 1000)
            body = orjson.dumps(
                {
                    "batch": [wire_message(t, self.start_ms, sent_ms) for t in touches],
                    "sentAt": iso(sent_ms + touches[0].skew_ms),
                }
            )
            wait: float
            t0 = time.monotonic()
            try:
                async with self._session.post(
                    self.endpoint, data=body, headers=self.headers
                ) as resp:
                    status, text = resp.status, await resp.text()
                    retry_after = resp.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, text, retry_after = 0, f"{type(exc).__name__}: {exc}", None
            self.stats.requests += 1
            if status == 200:
                self.stats.accepted += len(touches)
                self.stats.latencies.append(time.monotonic() - t0)
                answer = orjson.loads(text)
                if answer.get("rejected"):
                    raise SimulationError(f"the collector rejected messages: {answer['rejected']}")
                return
            if 400 <= status < 500 and status != 429:
                raise SimulationError(f"the collector answered {status}: {text[:500]}")
            if status in (429, 503):
                self.stats.throttled += 1
                wait = _seconds(retry_after, default=backoff)
            else:
                wait = backoff
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            if time.monotonic() - began > self.give_up_after:
                raise SimulationError(
                    f"gave up after {self.give_up_after:.0f}s; last answer {status}: {text[:300]}"
                )
            self.stats.retries += 1
            log.debug("event=send_retry status=%s wait=%.2f", status, wait)
            await asyncio.sleep(wait)


def _seconds(header: str | None, *, default: float) -> float:
    try:
        value = float(header) if header is not None else default
    except ValueError:
        value = default
    return min(max(value, 0.05), MAX_RETRY_AFTER_S)
