"""Tools for fault tests: a steady client that retries like the SDKs, and the warehouse check."""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson

from tests.integration.processes import Process, query, wait_until
from tracker.settings import Settings


def http_status(url: str, timeout: float = 5.0) -> int | str:
    """The status of a GET, or the name of the connection error."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path)
        return conn.getresponse().status
    except OSError as exc:
        return type(exc).__name__
    finally:
        conn.close()


class SteadyClient:
    """Sends numbered batches, each retried with the same messageIds until acknowledged.

    Retries follow ``Retry-After`` (capped, to keep tests short) as the SDKs do. A batch is never
    abandoned: ``stop()`` lets the one being sent finish, so every id the client ever sent is
    acknowledged, and the warehouse must hold exactly :meth:`ids`.
    """

    def __init__(
        self,
        url: Callable[[], str],
        prefix: str,
        *,
        per_batch: int = 10,
        customers: int = 50,
        pause: float = 0.02,
    ) -> None:
        self._url = url
        self.prefix = prefix
        self.per_batch = per_batch
        self.customers = customers
        self.pause = pause
        self.acked = 0
        self.answers: Counter[int | str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"client-{prefix}", daemon=True)

    def start(self) -> SteadyClient:
        self._thread.start()
        return self

    def stop(self, timeout: float = 120.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"client {self.prefix} still retrying: {self.answers}"

    def ids(self) -> list[str]:
        return [self._id(i) for i in range(self.acked * self.per_batch)]

    def _id(self, i: int) -> str:
        return f"{self.prefix}-{i:07d}"

    def _body(self, number: int) -> bytes:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        first = number * self.per_batch
        return orjson.dumps(
            {
                "batch": [
                    {
                        "type": "track",
                        "messageId": self._id(i),
                        "anonymousId": f"{self.prefix}-visitor-{i % self.customers}",
                        "event": "Product Viewed",
                        "timestamp": now,  # no sentAt: every retry stores the same event time
                    }
                    for i in range(first, first + self.per_batch)
                ]
            }
        )

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            body = self._body(number)
            while True:
                status, retry_after = self._send(body)
                self.answers[status] += 1
                if status == 200:
                    break
                time.sleep(min(retry_after, 1.0))
            self.acked = number = number + 1
            time.sleep(self.pause)  # the stream's rate

    def _send(self, body: bytes) -> tuple[int | str, float]:
        parts = urllib.parse.urlsplit(self._url())
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            conn.request(
                "POST", "/v1/batch", body=body, headers={"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            resp.read()
            return resp.status, float(resp.getheader("Retry-After") or 0.2)
        except OSError as exc:  # refused, reset, timed out: the request may or may not have landed
            return type(exc).__name__, 0.2
        finally:
            conn.close()


def start_clients(
    url: Callable[[], str], prefix: str, count: int = 4, pause: float = 0.02
) -> list[SteadyClient]:
    return [SteadyClient(url, f"{prefix}-{n}", pause=pause).start() for n in range(count)]


def wait_for_acks(clients: list[SteadyClient], more: int, *, timeout: float, what: str) -> None:
    """Until every client has had ``more`` batches acknowledged from now on."""
    base = [c.acked for c in clients]
    wait_until(
        lambda: all(c.acked >= n + more for c, n in zip(clients, base, strict=True)),
        timeout=timeout,
        what=f"{what} (answers so far: {[c.answers for c in clients]})",
    )


def stop_all(clients: list[SteadyClient], collector: Process) -> None:
    """Stop the clients (each finishes its batch), then the collector, whatever happens."""
    try:
        for client in clients:
            client.stop()
    finally:
        collector.stop()
    print(f"client answers: {[dict(c.answers) for c in clients]}")


def assert_each_id_once(
    settings: Settings, bootstrap: str, workdir: Path, clients: list[SteadyClient]
) -> None:
    """Run a worker over the topic and compare the warehouse with what the clients had acked."""
    expected = sorted(i for client in clients for i in client.ids())
    worker = Process("worker", settings, bootstrap, workdir).wait_ready()
    try:
        count = "SELECT count() AS n FROM tracker.touchpoints FINAL"
        wait_until(
            lambda: query(worker.url, count)[0]["n"] >= len(expected),
            timeout=120,
            what=f"{len(expected)} touchpoints in the warehouse",
        )
        rows = query(worker.url, "SELECT message_id FROM tracker.touchpoints FINAL")
        raw = query(worker.url, "SELECT count() AS n FROM tracker.touchpoints")[0]["n"]
    finally:
        worker.stop()
    stored = Counter(row["message_id"] for row in rows)
    lost = sorted(set(expected) - set(stored))
    doubled = sorted(i for i, n in stored.items() if n > 1)
    unknown = sorted(set(stored) - set(expected))
    print(f"acked ids {len(expected)}, rows under FINAL {len(rows)}, raw rows {raw}")
    assert (lost[:5], len(lost)) == ([], 0)
    assert (doubled[:5], len(doubled)) == ([], 0)
    assert unknown == []
    assert len(rows) == len(expected)
