"""The collector's HTTP application: Segment-compatible ingest, health and metrics."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections import Counter
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tracker.collector.ingest import (
    Checks,
    ParsedBatch,
    Rejected,
    decode_body,
    parse_batch,
    parse_json,
)
from tracker.collector.linger import Linger
from tracker.collector.openapi import OPENAPI
from tracker.collector.publisher import Publisher
from tracker.collector.sdk import SDK_PATH, StaticScript
from tracker.collector.sources import Source, Sources
from tracker.errors import UnavailableError, ValidationError
from tracker.metrics import Metrics
from tracker.settings import Settings

log = logging.getLogger(__name__)

SINGLE_TYPES = ("track", "page", "screen", "identify", "alias", "group")
# Where a batch may be posted: ours and Segment's, Segment's analytics.js 2.0 short form, and
# RudderStack's sendBeacon path (write key in the query string).
BATCH_PATHS = ("/v1/batch", "/v1/b", "/beacon/v1/batch")
# analytics.js 2.0 posts its own telemetry here: answered, counted and dropped.
SDK_METRICS_PATH = "/v1/m"
UNKNOWN_SOURCE = "unknown"  # the metrics label for requests no source could be found for
# The request headers a preflight allows: the ones browser SDKs send besides the simple ones,
# ours and RudderStack's (the visitor and send time, and what it says about a retried or
# recovered request). The list is fixed, never an echo of what the preflight asks for.
ALLOWED_REQUEST_HEADERS = (
    "Authorization", "Content-Type", "Content-Encoding", "X-Request-Id",
    "AnonymousId", "SentAt", "Rsa-Recovered", "Rsa-Retry-Attempt", "Rsa-Since-Last-Attempt",
    "Rsa-Since-First-Attempt", "Rsa-Retry-Reason",
)  # fmt: skip
CORS_HEADERS = {
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": ", ".join(ALLOWED_REQUEST_HEADERS),
    "Access-Control-Max-Age": "600",
    # Browser senders read Retry-After to back off on 429 and 503.
    "Access-Control-Expose-Headers": "Retry-After, X-Request-Id",
}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _error(status: int, reason: str, detail: str, **extra: Any) -> web.Response:
    return _json(status, {"success": False, "error": {"reason": reason, "detail": detail}, **extra})


class Collector:
    def __init__(
        self, settings: Settings, publisher: Publisher, metrics: Metrics, sources: Sources
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.metrics = metrics
        self.sources = sources
        self.linger = Linger(
            publisher,
            settings.topic_touchpoints,
            seconds=settings.collector_linger_ms / 1000,
            max_pending_bytes=settings.collector_linger_max_bytes,
            wait_seconds=settings.produce_timeout,
        )

    def build(self) -> web.Application:
        # Bodies may be compressed: the raw limit is the batch limit; decode_body bounds the rest.
        app = web.Application(client_max_size=self.settings.max_batch_bytes)
        for path in BATCH_PATHS:
            app.router.add_post(path, self.handle_batch)
        for kind in SINGLE_TYPES:
            handler = self._single(kind)
            app.router.add_post(f"/v1/{kind}", handler)
            app.router.add_post(f"/v1/{kind[0]}", handler)  # analytics.js 2.0: /v1/t, /v1/p, ...
        app.router.add_post(SDK_METRICS_PATH, self.handle_sdk_metrics)
        app.router.add_route("OPTIONS", "/v1/{kind}", self.handle_preflight)
        app.router.add_route("OPTIONS", "/beacon/v1/batch", self.handle_preflight)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/health/live", self.handle_live)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/openapi.json", self.handle_openapi)
        app.router.add_get("/sdk.js", StaticScript(SDK_PATH).handle)
        app.on_response_prepare.append(self._cors)
        return app

    async def _cors(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if (
            origin
            and request.path.startswith(("/v1/", "/beacon/"))
            and self.sources.origin_allowed_anywhere(origin)
        ):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers.update(CORS_HEADERS)

    async def handle_preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin", "")
        if not self.sources.origin_allowed_anywhere(origin):
            self.metrics.preflights_refused.inc()
            return _error(403, "origin_not_allowed", f"origin {origin!r} may not send events")
        return web.Response(status=204)

    async def handle_sdk_metrics(self, request: web.Request) -> web.Response:
        """An SDK's report about itself: not a touchpoint. Answered so it is not retried."""
        await request.read()  # bounded by client_max_size
        self.metrics.sdk_reports_dropped.inc()
        return _json(200, {"success": True})

    async def handle_openapi(self, request: web.Request) -> web.Response:
        return _json(200, OPENAPI)

    def _single(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return await self._ingest(request, single_type=kind)

        return handler

    async def handle_batch(self, request: web.Request) -> web.Response:
        return await self._ingest(request, single_type=None)

    async def handle_health(self, request: web.Request) -> web.Response:
        """Readiness: 200 only while Kafka acknowledges (as far as the collector can tell)."""
        ok = await self.publisher.probe()
        return _json(200 if ok else 503, {"status": self.publisher.state})

    async def handle_live(self, request: web.Request) -> web.Response:
        """Liveness: the process serves HTTP; Kafka's state does not matter here."""
        return _json(200, {"status": "live"})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _ingest(self, request: web.Request, *, single_type: str | None) -> web.Response:
        started = time.perf_counter()
        route = request.path
        request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
        response = await self._ingest_inner(request, single_type, request_id)
        self.metrics.request_seconds.labels(route, str(response.status)).observe(
            time.perf_counter() - started
        )
        response.headers["X-Request-Id"] = request_id
        return response

    async def _ingest_inner(
        self, request: web.Request, single_type: str | None, request_id: str
    ) -> web.Response:
        # The write key: the Basic username, else ?writeKey= (a beacon cannot set headers), else
        # the body's writeKey (read below).
        given_key = (
            basic_auth_user(request.headers.get("Authorization", ""))
            or request.query.get("writeKey")
            or None
        )
        source = self.sources.for_key(given_key) if given_key else None
        if given_key and source is None:
            return self._unauthorized()
        label = source.name if source else UNKNOWN_SOURCE
        try:
            async with asyncio.timeout(self.settings.collector_body_timeout):
                raw = await request.read()
        except TimeoutError:
            self.metrics.events_rejected.labels(label, "body_timeout").inc()
            response = _error(
                408, "body_timeout", f"body not received in {self.settings.collector_body_timeout}s"
            )
            response.force_close()
            return response
        except web.HTTPRequestEntityTooLarge:
            self.metrics.events_rejected.labels(label, "body_too_large").inc()
            return _error(
                413, "body_too_large", f"body exceeds {self.settings.max_batch_bytes} bytes"
            )
        received_at_ms = int(time.time() * 1000)
        try:
            body = decode_body(
                raw,
                request.headers.get("Content-Encoding", ""),
                limit=self.settings.max_batch_bytes,
            )
            payload = parse_json(body)
            if source is None:
                body_key = payload.get("writeKey") if isinstance(payload, dict) else None
                source = self.sources.for_key(body_key if isinstance(body_key, str) else None)
                if source is None:
                    return self._unauthorized()
            denied = self._check_origin_and_rate(request, source, payload, single_type)
            if denied is not None:
                return denied
            checks = Checks(
                source=source.name,
                received_at_ms=received_at_ms,
                max_message_bytes=self.settings.max_message_bytes,
                client_ip=self.client_ip(request),
                anonymize_ip=self.settings.anonymize_ip,
            )
            parsed = parse_batch(payload, checks, single_type=single_type)
        except ValidationError as exc:
            label = source.name if source else UNKNOWN_SOURCE
            self.metrics.events_rejected.labels(label, exc.reason).inc()
            log.info("event=body_rejected request_id=%s reason=%s", request_id, exc.reason)
            status = 413 if exc.reason == "body_too_large" else 400
            return _error(status, exc.reason, exc.detail)
        return await self._accept(parsed, source.name, received_at_ms, request_id)

    def client_ip(self, request: web.Request) -> str | None:
        """The sender's address: the peer, or with proxies in front, what the nearest one saw.

        Each trusted proxy appends the address it received from to ``X-Forwarded-For``; entries
        further left were written by the client itself and prove nothing.
        """
        hops = self.settings.trusted_proxy_hops
        forwarded = request.headers.getall("X-Forwarded-For", []) if hops else []
        chain = [part.strip() for header in forwarded for part in header.split(",")]
        chain = [part for part in chain if part]
        if chain:
            return chain[-min(hops, len(chain))][:64]
        return request.remote

    def _unauthorized(self) -> web.Response:
        self.metrics.events_rejected.labels(UNKNOWN_SOURCE, "unauthorized").inc()
        return _json(
            401,
            {"success": False, "error": {"reason": "unauthorized", "detail": "unknown write key"}},
            headers={"WWW-Authenticate": 'Basic realm="touchpoints"'},
        )

    def _check_origin_and_rate(
        self, request: web.Request, source: Source, payload: Any, single_type: str | None
    ) -> web.Response | None:
        origin = request.headers.get("Origin")
        if origin and not source.allows_origin(origin):
            self.metrics.events_rejected.labels(source.name, "origin_not_allowed").inc()
            return _error(403, "origin_not_allowed", f"origin {origin!r} may not send events")
        batch = payload.get("batch") if isinstance(payload, dict) else None
        messages = 1 if single_type or not isinstance(batch, list) else max(1, len(batch))
        wait = source.admit(messages)
        if wait:
            self.metrics.events_rejected.labels(source.name, "rate_limited").inc(messages)
            return _json(
                429,
                {"success": False, "error": {"reason": "rate_limited",
                 "detail": f"source {source.name} is over its rate limit"}},
                headers={"Retry-After": str(wait)},
            )  # fmt: skip
        return None

    async def _accept(
        self, parsed: ParsedBatch, source: str, received_at_ms: int, request_id: str
    ) -> web.Response:
        total = len(parsed.records) + len(parsed.rejected)
        self.metrics.events_received.labels(source).inc(total)
        try:
            await self._publish(parsed, source, received_at_ms)
        except UnavailableError as exc:
            self.metrics.kafka_unavailable.inc()
            log.warning("event=kafka_unavailable request_id=%s error=%s", request_id, exc)
            return _json(
                503,
                {"success": False, "error": {"reason": "unavailable", "detail": str(exc)}},
                headers={"Retry-After": str(int(exc.retry_after))},
            )
        for kind, n in Counter(record["type"] for record in parsed.records).items():
            self.metrics.events_accepted.labels(source, kind).inc(n)
        for reason, n in Counter(rej.reason for rej in parsed.rejected).items():
            self.metrics.events_rejected.labels(source, reason).inc(n)
        if parsed.records:
            self.metrics.batch_size.observe(len(parsed.records))
        rejected = [r.as_json() for r in parsed.rejected]
        if not parsed.records:
            first = parsed.rejected[0]
            return _error(400, first.reason, first.detail, rejected=rejected)
        body: dict[str, Any] = {"success": True}
        if rejected:
            body["accepted"] = len(parsed.records)
            body["rejected"] = rejected
        return _json(200, body)

    async def _publish(self, parsed: ParsedBatch, source: str, received_at_ms: int) -> None:
        await self.linger.publish(parsed.records)
        if parsed.rejected:
            dead = [_dead_letter(r, source, received_at_ms) for r in parsed.rejected]
            await self.publisher.publish(self.settings.topic_deadletter, dead)


def _dead_letter(rejected: Rejected, source: str, received_at_ms: int) -> tuple[None, bytes]:
    return None, orjson.dumps(
        {
            "reason": rejected.reason,
            "detail": rejected.detail,
            "index": rejected.index,
            "source": source,
            "received_at_ms": received_at_ms,
            "message": rejected.message,
        }
    )


def basic_auth_user(header: str) -> str | None:
    """The username of an HTTP Basic ``Authorization`` header (Segment's write key), if any."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except ValueError:
        return None
    return decoded.partition(":")[0] or None
