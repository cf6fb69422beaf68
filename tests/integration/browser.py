"""What the browser snippet tests drive: a small web site on its own origin that embeds the
snippet of docs/snippet.md, headless Chromium (Debian's build, through playwright), and a reader of
the touchpoints topic that collects every record the collector wrote."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer

from tracker.collector.sdk import STATIC

CHROMIUM = Path("/usr/bin/chromium")
SNIPPET = STATIC / "snippet.html"
# What a site owner replaces in the snippet.
PLACEHOLDERS = ("https://collector.example.com", "YOUR_WRITE_KEY", "{ consentRequired: false }")
# A 1x1 transparent GIF: the site's slow image.
PIXEL = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c000000000100010000020144003b"
)


async def poll(predicate: Callable[[], Any], *, what: str, within: float = 30.0) -> Any:
    """Wait until ``predicate()`` is truthy and return it; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out after {within}s waiting for {what}"
        await asyncio.sleep(0.05)
    return result


class Site:
    """Every path serves the shop page with the snippet, except ``/plain`` (no tracking),
    ``/marker`` (an empty answer) and ``/slow.gif?ms=N`` (an image that takes N ms)."""

    def __init__(self) -> None:
        self.collector_url = ""
        self.write_key = ""
        self.options: dict[str, Any] = {}
        self._runner: web.AppRunner | None = None
        self.origin = ""

    async def start(self) -> Site:
        app = web.Application()
        app.router.add_get("/plain", self._plain)
        app.router.add_get("/marker", self._marker)
        app.router.add_get("/slow.gif", self._slow)
        app.router.add_get("/{tail:.*}", self._page)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.origin = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def snippet(self) -> str:
        text = SNIPPET.read_text()
        for placeholder in PLACEHOLDERS:
            assert placeholder in text, f"the snippet no longer contains {placeholder!r}"
        return (
            text.replace(PLACEHOLDERS[0], self.collector_url)
            .replace(PLACEHOLDERS[1], self.write_key)
            .replace(PLACEHOLDERS[2], orjson.dumps(self.options).decode())
        )

    async def _page(self, request: web.Request) -> web.Response:
        slow = int(request.query.get("slow", "0"))
        image = f'<img src="/slow.gif?ms={slow}" alt="">' if slow else ""
        html = (
            f"<!doctype html><html><head><title>Shop</title>{self.snippet()}</head><body>"
            '<button id="buy" class="btn primary">Buy</button><button id="calm">Help</button>'
            f'<form name="signup"><input name="email"></form>{image}</body></html>'
        )
        return web.Response(text=html, content_type="text/html")

    async def _plain(self, request: web.Request) -> web.Response:
        return web.Response(
            text="<!doctype html><title>Elsewhere</title>", content_type="text/html"
        )

    async def _marker(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(int(request.query["ms"]) / 1000)  # the slowness being measured
        return web.Response(body=PIXEL, content_type="image/gif")


class TopicReader:
    """Reads the touchpoints topic from the start, collecting every record, until stopped."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.records: list[dict[str, Any]] = []
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=None,
        )  # fmt: skip
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> TopicReader:
        await asyncio.wait_for(self._consumer.start(), 30)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for message in messages:
                    self.records.extend(orjson.loads(message.value))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.wait_for(self._consumer.stop(), 30)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == "track" and r["event"] == name]

    async def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], Any], *, within: float = 30.0,
        what: str = "",
    ) -> Any:  # fmt: skip
        """Wait until ``predicate(records)`` is truthy; fail after ``within`` seconds."""

        def check() -> Any:
            if self._task is not None and self._task.done():
                self._task.result()  # the reader failed: raise its error
            return predicate(self.records)

        try:
            return await poll(check, what=what, within=within)
        except AssertionError as exc:
            summary = [(r["type"], r["event"]) for r in self.records]
            raise AssertionError(f"{exc}; topic: {summary}") from None


@dataclass
class Exchange:
    """One request of the page to the collector, with its status once known (0: failed)."""

    url: str
    sent: float
    body: bytes
    status: int | None = None
    answered: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def message_ids(self) -> list[str]:
        return [m["messageId"] for m in orjson.loads(self.body)["batch"]]


class Traffic:
    """Every POST of a browser context to the collector's ingest routes, in order."""

    def __init__(self, collector_url: str) -> None:
        self.prefix = f"{collector_url}/v1/"
        self.exchanges: list[Exchange] = []
        self._open: dict[Any, Exchange] = {}

    async def answered(self, within: float = 20.0) -> list[Exchange]:
        """The exchanges, once the browser has reported an answer to each."""
        await poll(
            lambda: all(x.status is not None for x in self.exchanges),
            what="answers to every request",
            within=within,
        )
        return self.exchanges

    def attach(self, context: Any) -> None:
        context.on("request", self._request)
        context.on("response", self._response)
        context.on("requestfailed", self._failed)

    def _request(self, request: Any) -> None:
        if request.method == "POST" and request.url.startswith(self.prefix):
            exchange = Exchange(request.url, time.monotonic(), request.post_data_buffer or b"")
            self.exchanges.append(exchange)
            self._open[request] = exchange

    def _response(self, response: Any) -> None:
        exchange = self._open.pop(response.request, None)
        if exchange is not None:
            exchange.status = response.status
            exchange.answered = time.monotonic()
            exchange.headers = dict(response.headers)

    def _failed(self, request: Any) -> None:
        exchange = self._open.pop(request, None)
        if exchange is not None:
            exchange.status = 0  # no answer: the network failed
            exchange.answered = time.monotonic()

    def failures(self) -> int:
        return sum(1 for x in self.exchanges if x.status == 0)
