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

from tests.integration.processes import Process, metric, post
from tests.integration.topics import read_topic
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


KINDS = ("track", "page", "screen", "identify", "alias", "group")


def test_openapi_document_lists_every_ingest_route(collector: Process) -> None:
    with urllib.request.urlopen(f"{collector.url}/openapi.json", timeout=10) as resp:
        doc = orjson.loads(resp.read())
    assert doc["openapi"].startswith("3.")
    assert sorted(doc["paths"]) == sorted(
        ["/v1/batch", "/v1/b", "/beacon/v1/batch", "/v1/m"]
        + [f"/v1/{k}" for k in KINDS]
        + [f"/v1/{k[0]}" for k in KINDS]
    )


def one(kind: str, i: int) -> dict[str, Any]:
    """A valid ``kind`` message, with ids as RudderStack's browser SDK sends a visitor's."""
    needs: dict[str, dict[str, Any]] = {
        "track": {"event": "Clicked"},
        "page": {"name": "Home"},
        "screen": {"name": "Cart"},
        "identify": {"userId": "cust-1", "context": {"traits": {"plan": "gold"}}},
        "alias": {"userId": "cust-1", "previousId": "visitor-1"},
        "group": {"groupId": "org-1"},
    }
    return {
        "messageId": f"{kind}-{i}",
        "anonymousId": "visitor-1",
        "userId": "",
        "originalTimestamp": "2026-01-01T00:00:00Z",
        **needs[kind],
    }


def test_segment_short_paths_and_the_beacon_path_reach_kafka(
    collector: Process, settings: Settings, kafka: EmbeddedKafka
) -> None:
    url = collector.url
    for kind in KINDS:
        # analytics.js 2.0: one letter per type, the write key in the text/plain body.
        body = orjson.dumps({**one(kind, 0), "writeKey": WEB_KEY})
        assert post(f"{url}/v1/{kind[0]}", body, {"Content-Type": "text/plain"}) == (
            200,
            {"success": True},
        )
    short_batch = orjson.dumps({"batch": [{**one("track", 1), "type": "track"}]})
    assert post(f"{url}/v1/b", short_batch, basic(WEB_KEY)) == (200, {"success": True})
    beacon = orjson.dumps(
        {"batch": [{**one("page", 2), "type": "page"}], "sentAt": "2026-01-01T00:00:00Z"}
    )
    # sendBeacon can set no header: the write key comes in the query string.
    assert post(f"{url}/beacon/v1/batch?writeKey={WEB_KEY}", beacon) == (200, {"success": True})
    for wrong in ("", "?writeKey=wk_wrong_999"):
        status, answer = post(f"{url}/beacon/v1/batch{wrong}", beacon)
        assert (status, answer["error"]["reason"]) == (401, "unauthorized")

    values = read_topic(kafka.bootstrap, settings.topic_touchpoints, at_least=1)
    records = {r["message_id"]: r for _, v in values for r in orjson.loads(v)}
    assert sorted(records) == sorted([f"{k}-0" for k in KINDS] + ["track-1", "page-2"])
    for kind in KINDS:
        record = records[f"{kind}-0"]
        assert (record["type"], record["source"]) == (kind, "web")
        assert record["user_id"] == ("cust-1" if kind in ("identify", "alias") else "")
        assert record["timestamp_ms"] == 1_767_225_600_000  # originalTimestamp, the device time
    assert records["identify-0"]["traits"] == {"plan": "gold"}
    assert records["alias-0"]["previous_id"] == "visitor-1"
    assert records["page-2"]["event"] == "Home"


def test_sdk_reports_are_answered_counted_and_dropped(
    collector: Process, settings: Settings, kafka: EmbeddedKafka
) -> None:
    report = orjson.dumps({"series": [{"type": "Counter", "metric": "analytics_js.invoke"}]})
    for _ in range(2):
        assert post(f"{collector.url}/v1/m", report, {"Content-Type": "text/plain"}) == (
            200,
            {"success": True},
        )
    assert metric(collector, "tracker_collector_sdk_reports_dropped_total") == 2
    assert (
        post(f"{collector.url}/v1/t", orjson.dumps({**one("track", 9), "writeKey": WEB_KEY}))[0]
        == 200
    )
    values = read_topic(kafka.bootstrap, settings.topic_touchpoints, at_least=1)
    assert [r["message_id"] for _, v in values for r in orjson.loads(v)] == ["track-9"]


def test_preflight_allows_the_headers_sdks_send_and_only_those(collector: Process) -> None:
    asked = "anonymousid, sentat, rsa-retry-attempt, x-made-up, content-type, authorization"
    pre = {
        "Origin": SHOP,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": asked,
    }
    for path in ("/v1/batch", "/v1/t", "/v1/track", "/beacon/v1/batch"):
        ok = _request(f"{collector.url}{path}", "OPTIONS", pre)
        assert (ok.status, ok.headers["Access-Control-Allow-Origin"]) == (204, SHOP)
        allowed = {h.strip().lower() for h in ok.headers["Access-Control-Allow-Headers"].split(",")}
        assert {
            "authorization",
            "content-type",
            "content-encoding",
            "anonymousid",
            "sentat",
            "rsa-retry-attempt",
            "rsa-since-last-attempt",
            "rsa-since-first-attempt",
            "rsa-retry-reason",
        } <= allowed
        assert "x-made-up" not in allowed  # a fixed list, not an echo of the request

    before = metric(collector, "tracker_collector_preflights_refused_total")
    evil = _request(f"{collector.url}/v1/t", "OPTIONS", {**pre, "Origin": "https://evil.example"})
    assert evil.status == 403 and "Access-Control-Allow-Origin" not in evil.headers
    assert metric(collector, "tracker_collector_preflights_refused_total") == before + 1


def test_the_new_paths_keep_origin_checks_and_rate_limits(collector: Process) -> None:
    # The tills source allows no browser origin and 0.1 message a second.
    body = orjson.dumps({"batch": [{**one("track", 0), "type": "track"}]})
    from_page = {"Origin": SHOP, "Content-Type": "text/plain"}
    refused = _request(
        f"{collector.url}/beacon/v1/batch?writeKey={TILLS_KEY}", "POST", from_page, body
    )
    assert refused.status == 403
    assert orjson.loads(refused.body)["error"]["reason"] == "origin_not_allowed"
    assert (
        post(
            f"{collector.url}/v1/b",
            orjson.dumps({"batch": [{**one("track", i), "type": "track"} for i in range(2)]}),
            basic(TILLS_KEY),
        )[0]
        == 200
    )
    over = _request(
        f"{collector.url}/v1/t", "POST", basic(TILLS_KEY), orjson.dumps(one("track", 5))
    )
    assert over.status == 429 and int(over.headers["Retry-After"]) >= 15
