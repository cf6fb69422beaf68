"""The collector's edge at the HTTP level, against the running process and real Kafka:
write keys, rate limits, CORS and the OpenAPI document."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.processes import Process, post
from tracker.kafka.broker import EmbeddedKafka
from tracker.settings import Settings

pytestmark = pytest.mark.integration

WEB_KEY, TILLS_KEY = "wk_web_0001", "wk_tills_0002"
SHOP = "https://shop.example"


@pytest.fixture
def collector(settings: Settings, kafka: EmbeddedKafka, tmp_path: Path) -> Iterator[Process]:
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        "sources:\n"
        f"  - {{name: web, write_key: {WEB_KEY}, origins: ['{SHOP}'], rate_limit: 1000}}\n"
        f"  - {{name: tills, write_key: {TILLS_KEY}, rate_limit: 0.1}}\n"
    )
    configured = settings.model_copy(update={"sources_file": sources})
    proc = Process("collector", configured, kafka.bootstrap, tmp_path).wait_ready()
    yield proc
    proc.stop()


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def batch(n: int = 1, **extra: Any) -> bytes:
    msgs = [{"type": "track", "messageId": f"m{i}", "userId": "u", "event": "E"} for i in range(n)]
    return orjson.dumps({"batch": msgs, **extra})


def test_unknown_or_missing_write_key_is_401(collector: Process) -> None:
    for headers in ({}, basic("wk_wrong_999")):
        status, body = post(f"{collector.url}/v1/batch", batch(), headers)
        assert (status, body["error"]["reason"]) == (401, "unauthorized")


def test_write_key_as_basic_user_or_in_the_body(collector: Process) -> None:
    assert post(f"{collector.url}/v1/batch", batch(), basic(WEB_KEY)) == (200, {"success": True})
    assert post(f"{collector.url}/v1/batch", batch(writeKey=WEB_KEY)) == (200, {"success": True})


def test_over_the_rate_limit_is_429_with_retry_after(collector: Process) -> None:
    # tills: 0.1 message/s, bursts of 1: two messages put it 1 in debt, the next waits 20 s.
    assert post(f"{collector.url}/v1/batch", batch(2), basic(TILLS_KEY))[0] == 200
    over = _request(f"{collector.url}/v1/batch", "POST",
                    {"Content-Type": "application/json", **basic(TILLS_KEY)}, batch(1))  # fmt: skip
    assert over.status == 429
    assert 15 <= int(over.headers["Retry-After"]) <= 20
    assert orjson.loads(over.body)["error"]["reason"] == "rate_limited"


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes


def _request(url: str, method: str, headers: dict[str, str], data: bytes | None = None) -> Answer:
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return Answer(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, exc.headers, exc.read())


def test_cors_only_for_allowed_origins(collector: Process) -> None:
    pre = {"Origin": SHOP, "Access-Control-Request-Method": "POST"}
    ok = _request(f"{collector.url}/v1/batch", "OPTIONS", pre)
    assert ok.status == 204
    assert ok.headers["Access-Control-Allow-Origin"] == SHOP
    assert "Authorization" in ok.headers["Access-Control-Allow-Headers"]
    evil = _request(
        f"{collector.url}/v1/batch", "OPTIONS", {**pre, "Origin": "https://evil.example"}
    )
    assert evil.status == 403 and "Access-Control-Allow-Origin" not in evil.headers

    headers = {"Content-Type": "application/json", "Origin": SHOP, **basic(WEB_KEY)}
    sent = _request(f"{collector.url}/v1/batch", "POST", headers, batch())
    assert (sent.status, sent.headers["Access-Control-Allow-Origin"]) == (200, SHOP)
    # The tills source allows no browser origin at all.
    tills = _request(f"{collector.url}/v1/track", "POST", {**headers, **basic(TILLS_KEY)},
                     orjson.dumps({"messageId": "x", "userId": "u", "event": "E"}))  # fmt: skip
    assert tills.status == 403
    assert orjson.loads(tills.body)["error"]["reason"] == "origin_not_allowed"


def test_openapi_document_lists_every_ingest_route(collector: Process) -> None:
    with urllib.request.urlopen(f"{collector.url}/openapi.json", timeout=10) as resp:
        doc = orjson.loads(resp.read())
    assert doc["openapi"].startswith("3.")
    assert sorted(doc["paths"]) == sorted(
        f"/v1/{k}" for k in ("batch", "track", "page", "screen", "identify", "alias", "group")
    )
