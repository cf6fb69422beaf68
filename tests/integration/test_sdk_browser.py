"""The browser SDKs people already run, unchanged and pinned, in Debian's headless Chromium:
@segment/analytics-next and @rudderstack/analytics-js, loaded from a local page with every
settings and code fetch pointed at that page's server (no CDN), sending to the real collector.

Every call must land in ``tracker.touchpoints`` exactly once with its fields and the true event
time, although the page's clock is an hour fast. A page on an origin the source does not list
gets nothing stored, whether its requests need a CORS preflight or not, and the refusal is
counted.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.integration.browser import CHROMIUM
from tests.integration.processes import metric, wait_until
from tests.integration.sdk_stack import (
    NODE_MODULES,
    SDK_DIR,
    Stack,
    assert_stored_once,
    calls,
    running_stack,
)
from tracker.kafka.broker import EmbeddedKafka

pytestmark = pytest.mark.integration

WRITE_KEY = "wk_browser_sdks_01"
HOUR_MS = 3_600_000
SEGMENT_DIST = NODE_MODULES / "@segment" / "analytics-next" / "dist" / "umd"
RUDDER_BUNDLE = (
    NODE_MODULES / "@rudderstack" / "analytics-js" / "dist" / "npm" / "modern" / "bundled" / "umd"
)

# analytics.js 2.0 reads where to fetch its code chunks from window.analytics._cdn, as for a
# self-hosted copy; its settings come from cdnURL, its events go to the Segment.io apiHost.
SEGMENT_PAGE = """<!doctype html><html><head><title>Shop</title>
<script>window.analytics = {_cdn: location.origin};</script>
<script src="/segment/index.js"></script>
<script>
const cfg = JSON.parse(new URLSearchParams(location.search).get("cfg"));
const sdk = AnalyticsNext.AnalyticsBrowser.load(
  {writeKey: cfg.writeKey, cdnURL: location.origin},
  {integrations: {"Segment.io": cfg.segmentio}});
window.loaded = sdk.then(() => true);
window.send = async (calls) => {
  await sdk.setAnonymousId(cfg.visitor);
  for (const c of calls) {
    if (c.type === "page") await sdk.page(c.name, c.properties);
    else if (c.type === "screen") await sdk.screen(c.name, c.properties);
    else if (c.type === "track") await sdk.track(c.event, c.properties);
    else if (c.type === "identify") await sdk.identify(c.userId, c.traits);
    else if (c.type === "alias") await sdk.alias(c.userId, c.previousId);
    else if (c.type === "group") await sdk.group(c.groupId, c.traits);
  }
};
</script></head><body>shop</body></html>"""

# The bundled build carries its plugins; the source config comes from configUrl.
RUDDER_PAGE = """<!doctype html><html><head><title>Shop</title>
<script src="/rudderstack/index.js"></script>
<script>
const cfg = JSON.parse(new URLSearchParams(location.search).get("cfg"));
const sdk = new rudderanalytics.RudderAnalytics();
window.loaded = new Promise((resolve) => sdk.load(cfg.writeKey, cfg.dataPlaneUrl, {
  configUrl: location.origin, polyfillIfRequired: false, onLoaded: () => resolve(true),
  ...cfg.options}));
window.send = async (calls) => {
  await window.loaded;
  sdk.setAnonymousId(cfg.visitor);
  for (const c of calls) {
    if (c.type === "page") sdk.page(c.name, c.properties);
    else if (c.type === "track") sdk.track(c.event, c.properties);
    else if (c.type === "identify") sdk.identify(c.userId, c.traits);
    else if (c.type === "alias") sdk.alias(c.userId, c.previousId);
    else if (c.type === "group") sdk.group(c.groupId, c.traits);
  }
};
</script></head><body>shop</body></html>"""


@dataclass
class Site:
    """The shop's own web server: the pages, the SDKs' files from node_modules, and the remote
    settings each SDK asks for, all on loopback. Remembers every path it was asked for."""

    collector_url: str = ""
    served: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def start(self) -> Site:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.served.append(self.path)
                status, kind, body = site.answer(urllib.parse.urlsplit(self.path).path)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def answer(self, path: str) -> tuple[int, str, bytes]:
        html, js, as_json = "text/html", "application/javascript", "application/json"
        if path == "/segment.html":
            return 200, html, SEGMENT_PAGE.encode()
        if path == "/rudderstack.html":
            return 200, html, RUDDER_PAGE.encode()
        if path == "/rudderstack/index.js":
            return 200, js, (RUDDER_BUNDLE / "index.js").read_bytes()
        for prefix in ("/segment/", "/analytics-next/bundles/"):
            if path.startswith(prefix):
                return _file(SEGMENT_DIST, path.removeprefix(prefix), js)
        if path.startswith("/v1/projects/") and path.endswith("/settings"):
            return 200, as_json, json.dumps(self.segment_settings()).encode()
        if path.rstrip("/") == "/sourceConfig":
            return 200, as_json, json.dumps(RUDDER_SOURCE_CONFIG).encode()
        return 404, "text/plain", b"not here"

    def segment_settings(self) -> dict[str, Any]:
        """What Segment's CDN serves for a source: its destination (us) and its SDK telemetry."""
        host = self.collector_url.removeprefix("http://") + "/v1"
        return {
            "integrations": {
                "Segment.io": {"apiKey": WRITE_KEY, "apiHost": host, "protocol": "http"}
            },
            "plan": {},
            "metrics": {"sampleRate": 1, "flushTimer": 200},
        }


RUDDER_SOURCE_CONFIG = {
    "source": {
        "id": "local-source", "name": "shop", "workspaceId": "local", "writeKey": WRITE_KEY,
        "enabled": True, "destinations": [],
        "config": {"statsCollection": {"errors": {"enabled": False},
                                       "metrics": {"enabled": False}}},
    }
}  # fmt: skip


def _file(root: Path, name: str, kind: str) -> tuple[int, str, bytes]:
    path = (root / name).resolve()
    if path.parent != root.resolve() or not path.is_file():
        return 404, "text/plain", b"not here"
    return 200, kind, path.read_bytes()


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if not SEGMENT_DIST.is_dir() or not RUDDER_BUNDLE.is_dir():
        pytest.fail("tests/sdk/node_modules is needed: run scripts/setup --test")
    server = Site().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(
    kafka: EmbeddedKafka, tmp_path_factory: pytest.TempPathFactory, site: Site
) -> Iterator[Stack]:
    # Only the 127.0.0.1 origin may send; the same pages reached as localhost are another origin.
    origin = f"http://127.0.0.1:{site.port}"
    sources = (
        f"sources:\n  - {{name: web, write_key: {WRITE_KEY}, origins: ['{origin}'], "
        "rate_limit: 1000}\n"
    )
    workdir = tmp_path_factory.mktemp("browser-sdks")
    with running_stack(kafka, workdir, uuid.uuid4().hex[:10], sources) as running:
        site.collector_url = running.collector.url
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
        )
        yield chromium
        chromium.close()


@dataclass
class Visit:
    page: Page
    elsewhere: list[str]  # requests to anything but loopback: there must be none
    posted: list[str]  # the paths the page posted to on the collector
    console: list[str]


@pytest.fixture
def visit(browser: Browser, site: Site) -> Iterator[Any]:
    contexts = []

    def open_page(url: str) -> Visit:
        ctx = browser.new_context()
        ctx.set_default_timeout(20_000)
        contexts.append(ctx)
        elsewhere: list[str] = []
        posted: list[str] = []

        def seen(request: Any) -> None:
            url = urllib.parse.urlsplit(request.url)
            if url.hostname not in ("127.0.0.1", "localhost"):
                elsewhere.append(request.url)
            elif request.method == "POST" and url.port != site.port:
                posted.append(url.path)

        ctx.on("request", seen)
        # The visitor's clock is an hour fast.
        ctx.add_init_script(f"globalThis.SKEW_MS = {HOUR_MS};")
        ctx.add_init_script(path=str(SDK_DIR / "skewed-clock.mjs"))
        page = ctx.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.goto(url)
        return Visit(page, elsewhere, posted, console)

    yield open_page
    for ctx in contexts:
        ctx.close()


def browser_calls(run: str, sdk: str) -> list[dict[str, Any]]:
    """The calls a visitor makes; in a browser every message also carries its anonymousId."""
    visitor = f"{run}-visitor"
    sent = [{**c, "anonymousId": visitor} for c in calls(run)]
    if sdk == "rudderstack":  # its browser SDK has no screen call
        sent = [c for c in sent if c["type"] != "screen"]
    return sent


def page_url(site: Site, sdk: str, run: str, options: dict[str, Any], host: str) -> str:
    cfg: dict[str, Any] = {"writeKey": WRITE_KEY, "visitor": f"{run}-visitor"}
    if sdk == "segment":
        api_host = site.collector_url.removeprefix("http://") + "/v1"
        cfg["segmentio"] = {"apiHost": api_host, "protocol": "http", **options}
    else:
        cfg["dataPlaneUrl"] = site.collector_url
        cfg["options"] = options
    query = urllib.parse.urlencode({"cfg": json.dumps(cfg)})
    return f"http://{host}:{site.port}/{sdk}.html?{query}"


BROWSER_MODES: dict[str, dict[str, dict[str, Any]]] = {
    "segment": {
        "one-by-one": {},  # /v1/t, /v1/p, ...
        "batched": {"deliveryStrategy": {"strategy": "batching",
                                         "config": {"size": 20, "timeout": 300}}},  # /v1/b
    },
    "rudderstack": {
        "one-by-one": {},  # /v1/track, /v1/page, ...
        "batched": {"queueOptions": {"batch": {"enabled": True, "maxItems": 20,
                                               "flushInterval": 300}}},  # /v1/batch
        "beacon": {"useBeacon": True,
                   "beaconQueueOptions": {"maxItems": 20, "flushQueueInterval": 300}},
    },
}  # fmt: skip
# Where each mode posts its touchpoints (analytics.js 2.0 also posts its own telemetry to /v1/m).
SEGMENT_PATHS = {"/v1/p", "/v1/t", "/v1/i", "/v1/a", "/v1/g", "/v1/s"}
RUDDER_PATHS = {"/v1/page", "/v1/track", "/v1/identify", "/v1/alias", "/v1/group"}
POSTED_TO = {
    ("segment", "one-by-one"): SEGMENT_PATHS, ("segment", "batched"): {"/v1/b"},
    ("rudderstack", "one-by-one"): RUDDER_PATHS, ("rudderstack", "batched"): {"/v1/batch"},
    ("rudderstack", "beacon"): {"/beacon/v1/batch"},
}  # fmt: skip


@pytest.mark.parametrize(("sdk", "mode"), sorted(POSTED_TO))
def test_browser_sdk(stack: Stack, site: Site, visit: Any, sdk: str, mode: str) -> None:
    run = uuid.uuid4().hex[:12]
    sent = browser_calls(run, sdk)
    v = visit(page_url(site, sdk, run, BROWSER_MODES[sdk][mode], "127.0.0.1"))
    assert v.page.evaluate("window.loaded"), v.console
    before = int(time.time() * 1000)
    v.page.evaluate("calls => window.send(calls)", sent)
    wait_until(lambda: len(stack.touchpoints(run)) >= len(sent), timeout=60,
               what=f"{len(sent)} touchpoints of {sdk} {mode}")  # fmt: skip
    after = int(time.time() * 1000)
    stack.settled()
    rows = stack.touchpoints(run)
    assert_stored_once(rows, sent, source="web", time_window=(before, after))
    for row in rows:  # the page's own stamp, an hour ahead, is kept beside the true time
        assert HOUR_MS - 2_000 <= row["device_ms"] - row["time_ms"] <= HOUR_MS + 2_000
    v.page.evaluate("0")  # a round trip: playwright hands over the request events seen so far
    assert v.elsewhere == [], "the SDK reached beyond loopback"
    assert set(v.posted) - {"/v1/m"} == POSTED_TO[sdk, mode]


def test_segment_reports_about_itself_are_answered_and_dropped(
    stack: Stack, site: Site, visit: Any
) -> None:
    run = uuid.uuid4().hex[:12]
    before = metric(stack.collector, "tracker_collector_sdk_reports_dropped_total")
    v = visit(page_url(site, "segment", run, {}, "127.0.0.1"))
    assert v.page.evaluate("window.loaded"), v.console
    v.page.evaluate("calls => window.send(calls)", browser_calls(run, "segment")[:2])
    wait_until(
        lambda: metric(stack.collector, "tracker_collector_sdk_reports_dropped_total") > before,
        timeout=30, what="analytics.js's own report on /v1/m",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("sdk", "mode", "preflight"),
    [("segment", "one-by-one", True), ("rudderstack", "one-by-one", True),
     ("rudderstack", "beacon", False)],
)  # fmt: skip
def test_a_page_on_an_origin_the_source_does_not_allow_gets_nothing_stored(
    stack: Stack, site: Site, visit: Any, sdk: str, mode: str, preflight: bool
) -> None:
    run = uuid.uuid4().hex[:12]

    def refusals() -> float:
        if preflight:  # Authorization or a JSON body needs a preflight, which is refused
            return metric(stack.collector, "tracker_collector_preflights_refused_total")
        # A beacon needs none: the request itself is refused.
        return metric(stack.collector, "tracker_events_rejected_total",
                      source="web", reason="origin_not_allowed")  # fmt: skip

    before = refusals()
    v = visit(page_url(site, sdk, run, BROWSER_MODES[sdk][mode], "localhost"))
    assert v.page.evaluate("window.loaded"), v.console
    v.page.evaluate("calls => window.send(calls)", browser_calls(run, sdk))
    wait_until(lambda: refusals() > before, timeout=30, what="the refusal to be counted")
    stack.settled()
    assert stack.touchpoints(run) == []
    v.page.evaluate("0")
    assert v.posted, "the page tried to send"
