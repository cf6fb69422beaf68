"""The worker's own HTTP endpoint: health, Prometheus metrics and read-only SQL.

In embedded mode the worker owns the chdb directory, so ``tracker query`` reaches the data through
``POST /query`` here. It refuses writes (ClickHouse readonly), and it reads personal data, so it is
closed to the network: with ``TRACKER_QUERY_TOKEN`` set every caller must send it as a bearer token
(401 otherwise); without one it answers loopback clients only (403 for anyone else). ``/health`` and
``/metrics`` stay open: they carry no customer data.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from pathlib import Path
from typing import Any

import mode
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tracker import readyfile
from tracker.errors import WarehouseError
from tracker.metrics import Metrics
from tracker.warehouse.client import Warehouse

log = logging.getLogger(__name__)

MAX_SQL_BYTES = 64 * 1024
CRASH_EXIT_CODE = 70  # EX_SOFTWARE: the worker crashed; a supervisor should start it again


def _dumps(body: Any) -> bytes:
    return orjson.dumps(body, default=str)


class WorkerWeb(mode.Service):
    def __init__(
        self,
        app: Any,
        warehouse: Warehouse,
        metrics: Metrics,
        *,
        host: str,
        port: int,
        ready_file: Path | None = None,
        query_token: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.warehouse = warehouse
        self.metrics = metrics
        self.host = host
        self.port = port
        self.ready_file = ready_file
        self.query_token = query_token
        self._runner: web.AppRunner | None = None

    def build(self) -> web.Application:
        app = web.Application(client_max_size=MAX_SQL_BYTES)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_view)
        app.router.add_post("/query", self.query)
        return app

    async def on_start(self) -> None:
        self._runner = web.AppRunner(self.build(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        log.info("event=worker_listening url=http://%s:%d", self.host, self.port)
        if self.ready_file is not None:
            readyfile.write(self.ready_file, url=f"http://{self.host}:{self.port}")

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def health(self, request: web.Request) -> web.Response:
        if self.app.crashed:
            return web.json_response({"status": "crashed"}, status=503)
        return web.json_response({"status": "ok"})

    @mode.Service.task
    async def _exit_when_crashed(self) -> None:
        """A crashed faust app never consumes again; exit so that a supervisor restarts us.

        Nothing is lost: what was not written was not acknowledged, and is read again.
        """
        while not self.should_stop:
            if self.app.crashed:
                log.error("event=worker_crashed reason=%r exit_code=%d",
                          self.app.crash_reason, CRASH_EXIT_CODE)  # fmt: skip
                os._exit(CRASH_EXIT_CODE)
            await self.sleep(1.0)

    async def metrics_view(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _refusal(self, request: web.Request) -> web.Response | None:
        """Why this caller may not query, or None when it may."""
        if self.query_token:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode(), self.query_token.encode()
            ):
                return None
            response = _error(
                401, "/query needs the worker's TRACKER_QUERY_TOKEN as a bearer token"
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="tracker-worker"'
            return response
        if _is_loopback(request.remote):
            return None
        return _error(
            403,
            "/query answers loopback clients only; set TRACKER_QUERY_TOKEN on the worker to let "
            "others in with that bearer token",
        )

    async def query(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            log.warning("event=query_refused status=%d peer=%s", refusal.status, request.remote)
            return refusal
        try:
            sql = (await request.read()).decode("utf-8")
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"SQL exceeds {MAX_SQL_BYTES} bytes")
        except UnicodeDecodeError:
            return _error(400, "SQL must be UTF-8 text")
        if not sql.strip():
            return _error(400, "empty SQL")
        try:
            result = await self.warehouse.aquery(sql)
        except WarehouseError as exc:
            return _error(400, str(exc))
        body = {"columns": result.columns, "rows": result.rows}
        return web.Response(body=_dumps(body), content_type="application/json")


def _is_loopback(peer: str | None) -> bool:
    try:
        address = ipaddress.ip_address(peer or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _error(status: int, detail: str) -> web.Response:
    return web.Response(
        status=status, body=_dumps({"error": detail}), content_type="application/json"
    )
