from __future__ import annotations

import asyncio

import uvloop

from tracker.collector.server import event_loop_factory
from tracker.settings import Settings


def test_collector_runs_on_uvloop_by_default() -> None:
    factory = event_loop_factory(Settings())
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
        assert loop.run_until_complete(asyncio.sleep(0, result=7)) == 7
    finally:
        loop.close()


def test_asyncio_loop_when_chosen() -> None:
    assert event_loop_factory(Settings(collector_event_loop="asyncio")) is None
