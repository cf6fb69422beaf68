"""The worker's POST /query reads personal data: closed to the network unless a token is set.

The worker's own aiohttp application, on a real socket, answering from a real chdb engine; the
"network" caller connects through this machine's non-loopback address.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from streams.web import WorkerWeb
from tracker.metrics import Metrics
from tracker.settings import Settings
from tracker.warehouse.client import Warehouse

pytestmark = pytest.mark.integration

SQL = "SELECT 41 + 1 AS answer"
Serve = Callable[[str], Awaitable[int]]


def _outside_address() -> str | None:
    """This machine's address on its default route: a peer that is not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("198.51.100.1", 9))  # a documentation address; UDP connect sends nothing
        except OSError:
            return None
        address = str(sock.getsockname()[0])
    return None if address.startswith("127.") else address


@pytest.fixture
async def serve(settings: Settings) -> AsyncIterator[Serve]:
    """Start the worker's web app on all interfaces with a given token; yield its port."""
    from prometheus_client import CollectorRegistry

    warehouse = Warehouse.from_settings(settings)
    runners: list[web.AppRunner] = []

    async def start(token: str) -> int:
        worker_web = WorkerWeb(
            SimpleNamespace(crashed=False), warehouse, Metrics(CollectorRegistry()),
            host="0.0.0.0", port=0, query_token=token,
        )  # fmt: skip
        runner = web.AppRunner(worker_web.build(), access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "0.0.0.0", 0)
        await site.start()
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()
    warehouse.close()


async def _post(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(f"{url}/query", data=SQL, headers=headers or {}) as response:
            return response.status, await response.json()


async def test_without_a_token_only_loopback_callers_may_query(serve: Serve) -> None:
    port = await serve("")
    assert await _post(f"http://127.0.0.1:{port}") == (200, {"columns": ["answer"], "rows": [[42]]})
    outside = _outside_address()
    if outside is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call from")
    status, body = await _post(f"http://{outside}:{port}")
    assert status == 403
    assert "TRACKER_QUERY_TOKEN" in str(body["error"])
    async with aiohttp.ClientSession() as session:  # the open endpoints stay open
        async with session.get(f"http://{outside}:{port}/health") as response:
            assert response.status == 200


async def test_with_a_token_every_caller_must_send_it(serve: Serve) -> None:
    port = await serve("s3cret-token")
    for url in {f"http://127.0.0.1:{port}", f"http://{_outside_address() or '127.0.0.1'}:{port}"}:
        assert (await _post(url))[0] == 401
        assert (await _post(url, {"Authorization": "Bearer wrong"}))[0] == 401
        assert (await _post(url, {"Authorization": "Basic s3cret-token"}))[0] == 401
        status, body = await _post(url, {"Authorization": "Bearer s3cret-token"})
        assert (status, body["rows"]) == (200, [[42]])


async def test_tracker_query_sends_the_token(serve: Serve, settings: Settings) -> None:
    """``tracker query`` through a running worker: it must present the configured token."""
    import asyncio

    from tracker import readyfile
    from tracker.querying import QueryError, run_query

    port = await serve("s3cret-token")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    readyfile.write(settings.run_file, worker=f"http://127.0.0.1:{port}")
    with_token = settings.model_copy(update={"query_token": SecretStr("s3cret-token")})
    result = await asyncio.to_thread(run_query, with_token, SQL)
    assert result.rows == [(42,)]
    with pytest.raises(QueryError, match="bearer token"):
        await asyncio.to_thread(run_query, settings, SQL)
