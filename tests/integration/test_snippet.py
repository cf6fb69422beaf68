"""The browser snippet in real headless Chromium, sending to the real collector and Kafka.

Each test serves a shop page (embedding the snippet of docs/snippet.md) from its own origin, drives
it with playwright and reads back what arrived in the touchpoints topic.
"""

from __future__ import annotations

import gzip
import re
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.async_api import Browser, BrowserContext, Page
from playwright.async_api import Error as PlaywrightError

from tests.integration.browser import Site, TopicReader, Traffic, poll
from tests.integration.processes import Process
from tracker.collector.sdk import SDK_PATH
from tracker.kafka.broker import EmbeddedKafka
from tracker.kafka.client import ensure_topics
from tracker.settings import Settings

pytestmark = pytest.mark.integration

WEB_KEY, TINY_KEY = "wk_web_snippet_01", "wk_tiny_snippet_02"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
FAST = {"flushInterval": 100}  # the SDK's timer, short so tests do not wait for it


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    server = await Site().start()
    yield server
    await server.stop()


@pytest.fixture
def collector(
    settings: Settings, kafka: EmbeddedKafka, tmp_path: Path, site: Site
) -> Iterator[Process]:
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        "sources:\n"
        f"  - {{name: web, write_key: {WEB_KEY}, origins: ['{site.origin}'], rate_limit: 1000}}\n"
        # 0.5 messages a second, bursts of one: the second message in a row waits 2 s.
        f"  - {{name: tiny, write_key: {TINY_KEY}, origins: ['{site.origin}'], rate_limit: 0.5}}\n"
    )
    proc = Process(
        "collector",
        settings.model_copy(update={"sources_file": sources}),
        kafka.bootstrap,
        tmp_path,
    ).wait_ready()
    site.collector_url = proc.url
    site.write_key = WEB_KEY
    site.options = dict(FAST)
    yield proc
    proc.stop()


@pytest.fixture
async def topic(
    settings: Settings, kafka: EmbeddedKafka, collector: Process
) -> AsyncIterator[TopicReader]:
    await ensure_topics(settings, kafka.bootstrap, [settings.topic_touchpoints])
    reader = await TopicReader(kafka.bootstrap, settings.topic_touchpoints).start()
    yield reader
    await reader.stop()


@dataclass
class Shop:
    """One browser context on the shop site, the collector traffic it makes, and the topic."""

    ctx: BrowserContext
    traffic: Traffic
    site: Site
    topic: TopicReader

    async def open(self, path: str = "/shop") -> Page:
        page = await self.ctx.new_page()
        await page.goto(self.site.origin + path)
        await page.wait_for_function("window.tracker && window.tracker.loaded")
        return page

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.topic.events(name)

    async def wait(self, predicate: Callable[[list[dict[str, Any]]], Any], what: str) -> Any:
        return await self.topic.wait_for(predicate, what=what)


@pytest.fixture
async def shop(
    browser: Browser, collector: Process, site: Site, topic: TopicReader
) -> AsyncIterator[Shop]:
    ctx = await browser.new_context()
    ctx.set_default_timeout(20_000)
    traffic = Traffic(collector.url)
    traffic.attach(ctx)
    yield Shop(ctx, traffic, site, topic)
    await ctx.close()


async def settle(page: Page) -> None:
    """Ask the SDK to send now, then, once its timer has run, make a request of our own and wait
    for the answer: any request the SDK was going to make has been started and seen by then."""
    await page.evaluate("tracker.flush()")
    status = await page.evaluate(
        "new Promise(r => setTimeout(r, 0)).then(() => fetch('/marker')).then(r => r.status)"
    )
    assert status == 204


def by_type(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == kind]


def test_sdk_js_is_served_with_caching_and_gzip(collector: Process) -> None:
    source = SDK_PATH.read_bytes()
    req = urllib.request.Request(f"{collector.url}/sdk.js", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Content-Type"] == "application/javascript; charset=utf-8"
        assert resp.headers["Cache-Control"] == "public, max-age=3600"
        assert resp.headers["Vary"] == "Accept-Encoding"
        etag = resp.headers["ETag"]
        assert gzip.decompress(resp.read()) == source
    plain = urllib.request.Request(
        f"{collector.url}/sdk.js", headers={"Accept-Encoding": "gzip;q=0"}
    )
    with urllib.request.urlopen(plain, timeout=10) as resp:
        assert "Content-Encoding" not in resp.headers
        assert resp.read() == source
    again = urllib.request.Request(f"{collector.url}/sdk.js", headers={"If-None-Match": etag})
    with pytest.raises(urllib.error.HTTPError) as not_modified:
        urllib.request.urlopen(again, timeout=10)
    with not_modified.value as answer:
        assert answer.code == 304


def test_text_plain_body_with_write_key_is_a_simple_cors_request(
    collector: Process, site: Site
) -> None:
    # What sendBeacon and the SDK send: no Authorization header, no JSON content type.
    body = orjson.dumps({"writeKey": WEB_KEY, "batch": [
        {"type": "track", "messageId": "tp-1", "anonymousId": "a", "event": "E"}]})  # fmt: skip
    req = urllib.request.Request(
        f"{collector.url}/v1/batch", data=body, method="POST",
        headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": site.origin},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert orjson.loads(resp.read()) == {"success": True}
        assert resp.headers["Access-Control-Allow-Origin"] == site.origin
        assert "Retry-After" in resp.headers["Access-Control-Expose-Headers"]


async def test_ids_and_fields_survive_reloads_and_follow_identify(shop: Shop) -> None:
    page = await shop.open()
    anonymous_id = await page.evaluate("tracker.user().anonymousId")
    await page.evaluate("tracker.track('Product Viewed', {sku: 'X-1', price: 12.5})")
    await page.evaluate("tracker.identify('cust-42', {plan: 'gold'})")
    await page.evaluate("tracker.track('Product Added', {sku: 'X-1'})")
    await shop.wait(lambda rs: shop.events("Product Added"), what="Product Added")
    await page.reload()
    await page.wait_for_function("window.tracker && window.tracker.loaded")
    assert await page.evaluate("tracker.user().anonymousId") == anonymous_id
    records = await shop.wait(
        lambda rs: len(by_type(rs, "page")) == 2 and len(shop.events("Page Loaded")) == 2 and rs,
        what="two page views",
    )

    ids = [r["message_id"] for r in records]
    assert len(ids) == len(set(ids)) == 7
    assert all(UUID4.match(i) for i in ids)
    assert {r["anonymous_id"] for r in records} == {anonymous_id}
    assert {(r["source"], r["channel"]) for r in records} == {("web", "web")}
    first_view, second_view = sorted(by_type(records, "page"), key=lambda r: r["timestamp_ms"])
    assert (first_view["user_id"], second_view["user_id"]) == ("", "cust-42")
    assert first_view["event"] == "Shop"  # the page's title names the view
    assert first_view["properties"]["path"] == "/shop"
    assert first_view["properties"]["url"] == f"{shop.site.origin}/shop"
    viewed = shop.events("Product Viewed")[0]
    assert (viewed["user_id"], viewed["properties"]) == ("", {"sku": "X-1", "price": 12.5})
    (identify,) = by_type(records, "identify")
    assert (identify["user_id"], identify["traits"]) == ("cust-42", {"plan": "gold"})
    assert shop.events("Product Added")[0]["user_id"] == "cust-42"
    for r in records:
        assert r["context"]["library"]["name"] == "touchpoint-tracker.js"
        assert "HeadlessChrome" in r["context"]["userAgent"]
        assert r["context"]["page"]["path"] == "/shop"
        assert 0 < r["timestamp_ms"] <= r["sent_at_ms"] <= r["received_at_ms"] + 5_000

    await page.evaluate("tracker.alias('cust-42-eu')")
    await page.evaluate("tracker.reset()")
    await page.evaluate("tracker.track('After Reset')")
    after = (await shop.wait(lambda rs: shop.events("After Reset"), what="After Reset"))[0]
    (alias,) = await shop.wait(lambda rs: by_type(rs, "alias"), what="alias")
    assert (alias["user_id"], alias["previous_id"]) == ("cust-42-eu", "cust-42")
    assert after["user_id"] == "" and after["anonymous_id"] not in ("", anonymous_id)
    assert await page.evaluate("localStorage.getItem('tt_aid')") == f'"{after["anonymous_id"]}"'


async def test_offline_events_arrive_after_reconnect_and_a_reload(shop: Shop) -> None:
    page = await shop.open()
    await shop.wait(lambda rs: shop.events("Page Loaded"), what="page load")

    # Offline, then back online on the same page.
    await shop.ctx.set_offline(True)
    await page.evaluate("tracker.track('Offline One')")
    await poll(lambda: shop.traffic.failures() >= 1, what="a failed attempt")
    await shop.ctx.set_offline(False)
    await shop.wait(lambda rs: shop.events("Offline One"), what="Offline One")

    # Offline, then the page is reloaded (and fails to load) before the network returns.
    await shop.ctx.set_offline(True)
    await page.evaluate("tracker.track('Offline Two')")
    await poll(lambda: shop.traffic.failures() >= 2, what="a second failed attempt")
    assert "Offline Two" in await page.evaluate("localStorage.getItem('tt_q')")
    with pytest.raises(PlaywrightError):
        await page.reload()
    await shop.ctx.set_offline(False)
    await page.goto(shop.site.origin + "/shop")
    await shop.wait(lambda rs: shop.events("Offline Two"), what="Offline Two")
    await shop.wait(lambda rs: len(by_type(rs, "page")) == 2, what="second page view")
    assert len(shop.events("Offline One")) == 1
    # At least once: a request that may have left during the failed reload is sent again by
    # the next page, under the same messageId (the warehouse keeps one row per messageId).
    assert len({r["message_id"] for r in shop.events("Offline Two")}) == 1


async def test_offline_queue_is_bounded_dropping_the_oldest(shop: Shop) -> None:
    shop.site.options = {**FAST, "maxQueue": 3}
    page = await shop.open()
    await shop.wait(lambda rs: shop.events("Page Loaded"), what="page load")
    # The page load is in Kafka once the collector answered, but it leaves the queue only when the
    # browser has read that answer: going offline before then would leave it queued with the rest.
    await page.wait_for_function("tracker.stats().queued == 0", timeout=30_000)
    await shop.ctx.set_offline(True)
    for i in range(1, 6):
        await page.evaluate(f"tracker.track('Step {i}')")
    stats = await page.evaluate("tracker.stats()")
    assert (stats["queued"], stats["dropped"]) == (3, 2)
    await shop.ctx.set_offline(False)
    await shop.wait(lambda rs: shop.events("Step 5"), what="Step 5")
    sent = [r["event"] for r in shop.topic.records if r["event"].startswith("Step")]
    assert sorted(sent) == ["Step 3", "Step 4", "Step 5"]
    # The loss is reported with the first message sent after it.
    dropped = [r["context"].get("dropped") for r in shop.topic.records if r["event"] == "Step 3"]
    assert dropped == [2]
    await page.wait_for_function("tracker.stats().queued == 0 && tracker.stats().dropped == 0")


async def test_events_made_just_before_leaving_arrive(shop: Shop) -> None:
    shop.site.options = {"flushInterval": 60_000}  # only leaving the page sends
    page = await shop.open()
    await page.evaluate("tracker.track('Checkout Started', {cart: 3})")
    assert not any(b"Checkout Started" in x.body for x in shop.traffic.exchanges)
    await page.goto(shop.site.origin + "/plain")  # a page without the snippet: nothing replays
    records = await shop.wait(
        lambda rs: shop.events("Checkout Started") and by_type(rs, "page") and rs,
        what="the events of the page left",
    )
    assert shop.events("Checkout Started")[0]["properties"] == {"cart": 3}
    assert len({r["message_id"] for r in records}) == len(records)


async def test_nothing_is_sent_or_stored_before_consent(shop: Shop) -> None:
    shop.site.options = {**FAST, "consentRequired": True}
    page = await shop.open()
    await page.evaluate("tracker.track('Before Consent'); tracker.identify('cust-7')")
    await settle(page)
    assert shop.traffic.exchanges == []
    assert await page.evaluate("Object.keys(localStorage)") == []
    assert shop.topic.records == []

    await page.evaluate("tracker.consent(true)")
    records = await shop.wait(
        lambda rs: shop.events("Before Consent") and by_type(rs, "identify") and rs,
        what="events held until consent",
    )
    assert shop.events("Before Consent")[0]["user_id"] == ""
    assert {r["anonymous_id"] for r in records} == {
        orjson.loads(await page.evaluate("localStorage.getItem('tt_aid')"))
    }
    # The grant is remembered: the next page sends without asking again.
    await page.reload()
    await shop.wait(lambda rs: len(by_type(rs, "page")) == 2, what="page view after reload")

    await page.evaluate("tracker.consent(false)")
    keys = await page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('tt_'))")
    assert keys == ["tt_consent"]
    sent = len(shop.traffic.exchanges)
    await page.evaluate("tracker.track('After Refusal')")
    await page.reload()
    await page.wait_for_function("window.tracker && window.tracker.loaded")
    await settle(page)
    assert len(shop.traffic.exchanges) == sent
    assert shop.events("After Refusal") == []


async def test_single_page_app_history_changes_send_page_views(shop: Shop) -> None:
    page = await shop.open("/app/home")
    await page.evaluate("history.pushState({}, '', '/app/checkout?step=1')")
    await page.evaluate("history.replaceState({n: 1}, '', '/app/checkout?step=1')")  # same page
    await page.evaluate("history.back()")
    await shop.wait(lambda rs: len(by_type(rs, "page")) >= 3, what="three page views")
    await settle(page)
    views = sorted(by_type(shop.topic.records, "page"), key=lambda r: r["timestamp_ms"])
    assert [v["properties"]["path"] for v in views] == ["/app/home", "/app/checkout", "/app/home"]
    checkout = views[1]
    assert checkout["properties"]["search"] == "?step=1"
    assert checkout["properties"]["referrer"] == f"{shop.site.origin}/app/home"
    assert checkout["context"]["page"]["path"] == "/app/checkout"
    assert views[2]["properties"]["referrer"] == f"{shop.site.origin}/app/checkout?step=1"


async def test_pain_signals_errors_slow_load_rage_clicks_and_form_steps(shop: Shop) -> None:
    page = await shop.open("/shop?slow=400")
    await page.evaluate("setTimeout(() => { throw new Error('checkout exploded'); }, 0)")
    await page.evaluate("Promise.reject(new Error('payment promise failed')); 0")
    await page.click("#calm")
    await page.click("#calm")  # two clicks: not rage
    await page.click("#buy", click_count=4)
    await page.evaluate("tracker.formStep(document.forms.signup, 2, 3)")
    await shop.wait(
        lambda rs: len(shop.events("Error Shown")) == 2 and shop.events("Page Loaded")
        and shop.events("Form Step Viewed"),
        what="pain events",
    )  # fmt: skip
    await settle(page)

    errors = {e["properties"]["kind"]: e["properties"] for e in shop.events("Error Shown")}
    assert errors["error"]["message"] == "checkout exploded"
    assert errors["error"]["path"] == "/shop"
    assert errors["unhandledrejection"]["message"] == "payment promise failed"
    (loaded,) = shop.events("Page Loaded")
    assert loaded["properties"]["load_ms"] >= 400  # the slow image held the load event
    (rage,) = shop.events("Rage Click")
    assert rage["properties"]["selector"] == "button#buy"
    assert (rage["properties"]["clicks"], rage["properties"]["text"]) == (3, "Buy")
    (step,) = shop.events("Form Step Viewed")
    assert step["properties"] == {"form": "signup", "step": 2, "total": 3, "progress": 67}


async def test_rate_limited_batches_wait_for_retry_after(shop: Shop) -> None:
    shop.site.write_key = TINY_KEY
    shop.site.options = {**FAST, "pageLoad": False}
    page = await shop.open()
    await shop.wait(lambda rs: by_type(rs, "page"), what="page view")
    await page.evaluate("tracker.track('Slow Down')")
    await shop.wait(lambda rs: shop.events("Slow Down"), what="Slow Down")

    exchanges = await shop.traffic.answered()
    statuses = [x.status for x in exchanges]
    limited = [i for i, x in enumerate(exchanges) if x.status == 429]
    assert limited, statuses
    for i in limited:
        refused, retry = exchanges[i], exchanges[i + 1]
        wait = int(refused.headers["retry-after"])
        assert wait >= 1
        assert refused.answered is not None
        # The browser reports events a little late: allow for that, not for an early retry.
        assert retry.sent - refused.answered >= wait - 0.1, (wait, retry.sent - refused.answered)
        assert retry.message_ids() == refused.message_ids()
    assert statuses[-1] == 200
    assert len(shop.events("Slow Down")) == 1


async def test_refused_batches_are_dropped_not_retried(shop: Shop) -> None:
    shop.site.write_key = "wk_unknown_key_99"
    page = await shop.open()
    await page.evaluate("tracker.track('Never Accepted')")
    await page.wait_for_function("tracker.stats().rejected == 3 && tracker.stats().queued == 0")
    await settle(page)
    exchanges = await shop.traffic.answered()
    assert {x.status for x in exchanges} == {401}
    sent = [i for x in exchanges for i in x.message_ids()]
    assert len(sent) == len(set(sent)) == 3  # page view, page load, the event: each sent once
    assert shop.topic.records == []
