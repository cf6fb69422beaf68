"""Runs the collector: topics, the Kafka producer and the HTTP server, until told to stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector

from tracker import readyfile
from tracker.collector.app import Collector
from tracker.collector.connections import Guard, listen, usable_connections
from tracker.collector.publisher import Publisher
from tracker.collector.sources import Sources
from tracker.kafka.client import ensure_topics
from tracker.metrics import Metrics
from tracker.settings import Settings

log = logging.getLogger(__name__)


async def serve(
    settings: Settings,
    bootstrap: str,
    *,
    port: int,
    ready_file: Path | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    stop = stop or _stop_on_signals()
    sources = Sources.load(settings.sources_file)
    if sources.is_open:
        log.warning("event=open_mode detail=no_sources_file_any_write_key_is_accepted")
    await ensure_topics(
        settings, bootstrap, [settings.topic_touchpoints, settings.topic_deadletter]
    )
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    metrics = Metrics(registry)
    rebuilds = metrics.producer_rebuilds
    publisher = Publisher(settings, bootstrap, on_rebuild=lambda why: rebuilds.labels(why).inc())
    await publisher.start()
    collector = Collector(settings, publisher, metrics, sources)
    runner = web.AppRunner(collector.build())
    await runner.setup()
    guard = Guard(
        max_connections=usable_connections(settings.collector_max_connections),
        header_timeout=settings.collector_header_timeout,
    )
    listener = await listen(
        runner,
        settings.collector_host,
        port,
        guard,
        # The collector inflates bodies itself, with a hard output limit.
        auto_decompress=False,
        access_log=None,
        keepalive_timeout=settings.collector_keepalive_timeout,
        # After an early answer (413, 408) read what is left of the body for at most this long.
        lingering_time=1.0,
    )
    try:
        # Everything built so far (modules, pydantic schemas, clients) lives as long as the
        # process: keep it out of the collector's way, or every full collection walks it again
        # in the middle of requests.
        gc.freeze()
        bound = int(listener.sockets[0].getsockname()[1])
        url = f"http://{settings.collector_host}:{bound}"
        log.info("event=collector_listening url=%s topic=%s", url, settings.topic_touchpoints)
        if ready_file is not None:
            readyfile.write(ready_file, url=url)
        await stop.wait()
    finally:
        listener.close()
        await runner.cleanup()
        await collector.linger.stop()
        await publisher.stop()
        log.info("event=collector_stopped")


def event_loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop the collector runs on: uvloop when chosen and installed, else asyncio's own."""
    if settings.collector_event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("event=uvloop_missing detail=running_on_the_asyncio_loop")
        else:
            return uvloop.new_event_loop
    return None


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
