"""Slow clients cannot hold the collector: late headers and bodies, idle and excess connections."""

from __future__ import annotations

import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.integration.processes import Process, post, wait_until
from tracker.kafka.broker import EmbeddedKafka
from tracker.settings import Settings

pytestmark = pytest.mark.integration

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
# Longer than the header timeout, so that what cuts a trickling client is the header deadline.
KEEPALIVE_TIMEOUT = 8.0
MAX_CONNECTIONS = 30


@pytest.fixture
def collector(settings: Settings, kafka: EmbeddedKafka, tmp_path: Path) -> Iterator[Process]:
    limited = settings.model_copy(
        update={
            "collector_header_timeout": HEADER_TIMEOUT,
            "collector_body_timeout": BODY_TIMEOUT,
            "collector_keepalive_timeout": KEEPALIVE_TIMEOUT,
            "collector_max_connections": MAX_CONNECTIONS,
        }
    )
    proc = Process("collector", limited, kafka.bootstrap, tmp_path).wait_ready()
    yield proc
    proc.stop()


def _address(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def _read_ready(sock: socket.socket) -> bytes | None:
    """What the server sent so far without blocking; None once it closed the connection."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return b""
    try:
        return sock.recv(65536) or None
    except OSError:
        return None


class Tricklers:
    """Connections that send a request one byte at a time, and when the server cut each."""

    def __init__(self, url: str, count: int, prefix: bytes) -> None:
        self.opened = time.monotonic()
        self.socks = [socket.create_connection(_address(url), timeout=5) for _ in range(count)]
        self.cut_at: dict[int, float] = {}
        self.answers = [b""] * count
        self._prefix = prefix
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Tricklers:
        for sock in self.socks:
            sock.sendall(self._prefix)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.socks:
            sock.close()

    @property
    def still_open(self) -> int:
        return len(self.socks) - len(self.cut_at)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            for n, sock in enumerate(self.socks):
                if n in self.cut_at:
                    continue
                try:
                    answer = _read_ready(sock)
                    if answer is not None:
                        self.answers[n] += answer
                        sock.sendall(b"x")
                except OSError:
                    answer = None
                if answer is None:
                    self.cut_at[n] = time.monotonic() - self.opened


def _good_request(url: str) -> int:
    body = {"batch": [{"type": "track", "messageId": "ok", "userId": "u", "event": "E"}]}
    status, _ = post(f"{url}/v1/batch", orjson.dumps(body))
    return status


def test_trickled_headers_are_cut_and_others_keep_being_served(collector: Process) -> None:
    prefix = b"POST /v1/batch HTTP/1.1\r\nHost: collector\r\nX-Slow: "
    with Tricklers(collector.url, 20, prefix) as slow:
        statuses = []
        while slow.still_open and time.monotonic() - slow.opened < HEADER_TIMEOUT + 8:
            statuses.append(_good_request(collector.url))
        cut = sorted(slow.cut_at.values())
    assert len(cut) == 20, f"only {len(cut)} of 20 slow connections were cut"
    # Cut by the header deadline: not before it, and soon after it.
    assert HEADER_TIMEOUT * 0.9 <= cut[0] and cut[-1] <= HEADER_TIMEOUT + 4, cut
    assert statuses and set(statuses) == {200}


def test_trickled_body_gets_408(collector: Process) -> None:
    head = (
        b"POST /v1/batch HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    with Tricklers(collector.url, 1, head) as slow:
        wait_until(lambda: slow.cut_at, timeout=BODY_TIMEOUT + 6, what="the slow body to end")
    status_line, _, rest = slow.answers[0].partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    assert orjson.loads(rest.partition(b"\r\n\r\n")[2])["error"]["reason"] == "body_timeout"
    # Closed after the body deadline, and soon after it.
    assert BODY_TIMEOUT * 0.9 <= slow.cut_at[0] <= BODY_TIMEOUT + 4


def test_idle_keep_alive_connection_is_closed(collector: Process) -> None:
    sock = socket.create_connection(_address(collector.url), timeout=10)
    with sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: collector\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        idle_from = time.monotonic()
        # Nothing more is sent; the server ends the connection after the keep-alive timeout.
        assert sock.recv(65536) == b""
        idle = time.monotonic() - idle_from
    assert KEEPALIVE_TIMEOUT * 0.9 <= idle <= KEEPALIVE_TIMEOUT + 4


def test_connection_bound_makes_room_for_new_clients(collector: Process) -> None:
    prefix = b"POST /v1/batch HTTP/1.1\r\nHost: collector\r\nX-Slow: "
    with Tricklers(collector.url, 2 * MAX_CONNECTIONS, prefix) as slow:
        # The newest slow clients took the places of the oldest: never more than the bound.
        wait_until(
            lambda: slow.still_open <= MAX_CONNECTIONS,
            timeout=HEADER_TIMEOUT,
            what=f"at most {MAX_CONNECTIONS} slow connections open",
        )
        assert slow.still_open > 0
        # Well-behaved clients are served at once although every slot was taken.
        started = time.monotonic()
        statuses = [_good_request(collector.url) for _ in range(10)]
        took = time.monotonic() - started
        assert statuses == [200] * 10
        assert took < HEADER_TIMEOUT, "served while the slow clients still held their slots"
