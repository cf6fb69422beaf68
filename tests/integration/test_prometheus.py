"""A real Prometheus scrapes a real collector and worker; every dashboard query and alert rule of
deploy/ is evaluated against it.

The expressions are read from the dashboard JSON and alerts.yml, never restated here. Dashboard
variables get the values a user would see: the journey this test drives for ``$journey``, a
custom variable's default, and fixed windows for Grafana's built-in ``$__...`` intervals.

Alert expressions compare a signal with a threshold, and under normal traffic the comparison is
false, so Prometheus returns nothing for them. The test turns every comparison into its ``bool``
form (``a > b`` becomes ``a > bool b``), which returns 0 or 1 for every series on which both sides
exist: an empty answer then means a metric, label or matching is wrong, whatever the thresholds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.integration.processes import Process, post, terminate, wait_until
from tracker.kafka.broker import EmbeddedKafka, free_port
from tracker.settings import REPO_ROOT, Settings

pytestmark = pytest.mark.integration

PROMETHEUS_BIN = shutil.which("prometheus") or "/usr/bin/prometheus"
DEPLOY = REPO_ROOT / "deploy"
DASHBOARDS = ("journeys-live.json", "pipeline-health.json")
JOURNEY = "quick_shop"
JOURNEYS = f"""
journeys:
  - name: {JOURNEY}
    window: 10m
    stages:
      - {{name: browse, match: {{event: Product Viewed}}, timeout: 2s}}
      - {{name: cart, match: {{event: Product Added}}, timeout: 2s}}
      - {{name: paid, match: {{event: Order Completed}}}}
    pain:
      - {{name: payment_failed, match: {{event: Payment Failed}}}}
    love:
      - {{name: fast_payment, match: {{event: Payment Method Selected}}}}
  - name: slow_shop
    window: 1d
    stages:
      - {{name: browse, match: {{event: Slow Viewed}}, timeout: 1h}}
      - {{name: cart, match: {{event: Slow Added}}, timeout: 1h}}
      - {{name: paid, match: {{event: Slow Paid}}}}
"""
# Grafana's built-in variables, at values that fit a 1 s scrape interval and a short test.
BUILTINS = {"__rate_interval": "30s", "__interval": "5s", "__range": "10m"}


# -- the expressions, from the deploy files ----------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [q for p in panels for q in (p, *_panels(p.get("panels", [])))]


def dashboard_queries(name: str) -> list[tuple[str, str, dict[str, str]]]:
    """(panel title, expression, variable defaults) of every Prometheus target of a dashboard."""
    board = json.loads((DEPLOY / "grafana" / "dashboards" / name).read_text())
    defaults = {
        v["name"]: v["current"]["value"]
        for v in board.get("templating", {}).get("list", [])
        if v["type"] == "custom"
    }
    return [
        (panel["title"], target["expr"], defaults)
        for panel in _panels(board["panels"])
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def substitute(expr: str, variables: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in variables, f"no value for ${name} in {expr}"
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(?!\s*bool\b)")


def with_bool(expr: str) -> str:
    """Every comparison outside label matchers and strings as its ``bool`` form."""
    out, depth, quote, i = [], 0, "", 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            quote = "" if ch == quote and expr[i - 1] != "\\" else quote
        elif ch in "\"'`":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif depth == 0 and (m := _COMPARISON.match(expr, i)):
            out.append(f"{m.group(1)} bool")
            i = m.end()
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def test_with_bool_leaves_label_matchers_alone() -> None:
    assert with_bool('up{job=~"a.*", x!="b"} == 0') == 'up{job=~"a.*", x!="b"} == bool 0'
    assert with_bool("a > bool 1 and b[5m] <= c") == "a > bool 1 and b[5m] <= bool c"


# -- the running pipeline and Prometheus -------------------------------------------------------


@pytest.fixture
def prom_settings(settings: Settings, tmp_path: Path) -> Settings:
    path = tmp_path / "journeys.yaml"
    path.write_text(JOURNEYS)
    return settings.model_copy(update={"journeys_file": path, "timer_interval": 0.1})


@pytest.fixture
def pipeline(
    prom_settings: Settings, kafka: EmbeddedKafka, tmp_path: Path
) -> Iterator[tuple[Process, Process]]:
    collector = Process("collector", prom_settings, kafka.bootstrap, tmp_path).wait_ready()
    try:
        worker = Process("worker", prom_settings, kafka.bootstrap, tmp_path).wait_ready()
    except BaseException:
        collector.stop()
        raise
    yield collector, worker
    worker.stop()
    collector.stop()


class Prometheus:
    def __init__(self, workdir: Path, collector: Process, worker: Process) -> None:
        config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in config["rule_files"]]
        urls = {"tracker-collector": collector.url, "tracker-worker": worker.url}
        jobs = [job["job_name"] for job in config["scrape_configs"]]
        assert sorted(jobs) == sorted(urls), jobs
        for job in config["scrape_configs"]:
            host = urllib.parse.urlsplit(urls[job["job_name"]]).netloc
            job["static_configs"] = [{"targets": [host]}]
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS_BIN, f"--config.file={config_path}",
             f"--storage.tsdb.path={workdir / 'prometheus-data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()[-4000:]
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = orjson.loads(resp.read())
        assert body["status"] == "success", (expr, body)
        assert body["data"]["resultType"] == "vector", (expr, body["data"]["resultType"])
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float:
        result = self.query(expr)
        return sum(float(r["value"][1]) for r in result)

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


@pytest.fixture
def prometheus(pipeline: tuple[Process, Process], tmp_path: Path) -> Iterator[Prometheus]:
    if not Path(PROMETHEUS_BIN).exists():
        pytest.fail("prometheus is not installed: scripts/setup --test installs it")
    prom = Prometheus(tmp_path, *pipeline)
    try:
        wait_until(prom.ready, timeout=60, what="Prometheus ready")
        yield prom
    finally:
        prom.stop()


# -- traffic -----------------------------------------------------------------------------------


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def track(mid: str, at_ms: int, event: str, customer: str) -> dict[str, Any]:
    return {"type": "track", "messageId": mid, "timestamp": iso(at_ms), "event": event,
            "anonymousId": customer}  # fmt: skip


def send_traffic(collector: Process, unique: str) -> None:
    t0 = int(time.time() * 1000)
    buyer, leaver, returner = f"{unique}-buyer", f"{unique}-leaver", f"{unique}-returner"
    batch = [
        # Converts: browse -> cart -> paid.
        track("b1", t0, "Product Viewed", buyer),
        track("b2", t0 + 500, "Product Added", buyer),
        track("b3", t0 + 1000, "Order Completed", buyer),
        # Drops off at browse once its 2 s pass, with a pain and a love signal seen there.
        track("l1", t0, "Product Viewed", leaver),
        track("l2", t0 + 100, "Payment Failed", leaver),
        track("l3", t0 + 200, "Payment Method Selected", leaver),
        # Dropped off at browse 3 s ago and comes back: a recovery; later a drop-off at cart.
        track("r1", t0 - 5000, "Product Viewed", returner),
        track("r2", t0, "Product Added", returner),
        # Later than the allowed lateness (1 h): stored raw, left out of journeys.
        track("late", t0 - 2 * 3600_000, "Product Viewed", f"{unique}-late"),
        # Rejected: no id of the sender.
        {"type": "track", "messageId": "bad", "event": "Product Viewed"},
    ]
    status, body = post(f"{collector.url}/v1/batch", orjson.dumps({"batch": batch}))
    assert status == 200 and body["accepted"] == len(batch) - 1, body
    status, body = post(f"{collector.url}/v1/batch", b"{not json")
    assert status == 400, body


# -- the test ----------------------------------------------------------------------------------


def test_every_dashboard_query_and_alert_rule_returns_series(
    pipeline: tuple[Process, Process], prometheus: Prometheus, unique: str
) -> None:
    collector, _worker = pipeline
    up = 'sum(up{job=~"tracker-.*"})'
    wait_until(lambda: prometheus.value(up) == 2, timeout=60, what="both targets scraped")
    send_traffic(collector, unique)

    def net(kind: str, stage: str) -> float:
        sel = f'{{journey="{JOURNEY}", kind="{kind}", stage="{stage}"}}'
        return prometheus.value(
            f"sum(tracker_journey_results_total{sel}) - sum(tracker_journey_corrections_total{sel})"
        )

    # Everything the traffic leads to, as Prometheus sees it (drop-offs come from timers).
    expected = {
        ("conversion", ""): 1, ("dropoff", "browse"): 2, ("recovery", "browse"): 1,
        ("dropoff", "cart"): 1, ("stage", "browse"): 3, ("advance", "browse"): 2,
    }  # fmt: skip
    wait_until(lambda: all(net(k, s) == n for (k, s), n in expected.items()), timeout=90,
               what="the journey results in Prometheus")  # fmt: skip
    wait_until(lambda: prometheus.query("tracker_consumer_lag_messages"), timeout=60,
               what="consumer lag series")  # fmt: skip
    # Recording rules have been evaluated, and range functions have a few samples to work on.
    wait_until(
        lambda: prometheus.query("count_over_time(tracker:journey_dropoff_ratio:rate15m[1m]) > 3"),
        timeout=60, what="recorded drop-off ratios",
    )  # fmt: skip

    # The journey variable offers the journey this test drives.
    journeys = prometheus.query("group by (journey) (tracker_journey_open_instances)")
    assert JOURNEY in {r["metric"]["journey"] for r in journeys}

    empty = []
    answers: dict[str, list[dict[str, Any]]] = {}
    checked = 0
    for name in DASHBOARDS:
        for title, expr, defaults in dashboard_queries(name):
            promql = substitute(expr, {**BUILTINS, **defaults, "journey": JOURNEY})
            answers[title] = prometheus.query(promql)
            checked += 1
            if not answers[title]:
                empty.append(f"{name} / {title}: {promql}")
    rules = alert_rules()
    for rule in rules:
        promql = with_bool(rule["expr"]) if "alert" in rule else rule["expr"]
        checked += 1
        if not prometheus.query(promql):
            empty.append(f"alerts.yml / {rule.get('alert') or rule['record']}: {promql}")
    assert not empty, "queries without a series:\n" + "\n".join(empty)
    assert checked >= 30 and any("alert" in r for r in rules)

    # A few panels, checked for what the traffic put there.
    def by(title: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in answers[title]}

    funnel = by("Funnel: stage entries in the time range", "stage")
    assert funnel["browse"] >= 2.5 and funnel["paid"] >= 0.5, funnel  # increase() extrapolates
    pain = {
        (r["metric"]["stage"], r["metric"]["signal"]): float(r["value"][1])
        for r in answers["Pain signals at drop-off, by stage"]
    }
    assert pain[("browse", "payment_failed")] > 0, pain
    assert by("Rejects per second, by reason", "reason").keys() >= {
        "invalid_json",
        "invalid_message",
    }
    assert by("Open instances per stage", "stage") == {"browse": 0, "cart": 0, "paid": 0}


def open_instances(worker: Process) -> dict[str, float]:
    """``tracker_journey_open_instances`` of slow_shop, read from the worker's /metrics."""
    with urllib.request.urlopen(f"{worker.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(
            r'tracker_journey_open_instances\{journey="slow_shop",stage="(\w+)"\} (\S+)', line
        )
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_open_instances_survive_a_worker_crash(
    prom_settings: Settings, kafka: EmbeddedKafka, tmp_path: Path, unique: str
) -> None:
    collector = Process("collector", prom_settings, kafka.bootstrap, tmp_path).wait_ready()
    workers: list[Process] = []
    try:
        workers.append(Process("worker", prom_settings, kafka.bootstrap, tmp_path).wait_ready())
        t0 = int(time.time() * 1000)
        batch = [track(f"v{i}", t0, "Slow Viewed", f"{unique}-{i}") for i in range(5)]
        batch += [track(f"a{i}", t0 + 1, "Slow Added", f"{unique}-{i}") for i in range(2)]
        status, body = post(f"{collector.url}/v1/batch", orjson.dumps({"batch": batch}))
        assert status == 200, body
        want = {"browse": 3.0, "cart": 2.0, "paid": 0.0}
        wait_until(lambda: open_instances(workers[0]) == want, timeout=60,
                   what="open instances counted live")  # fmt: skip
        workers[0].kill()
        # A new worker starts from zero and recounts the customers it recovers from Kafka.
        workers.append(Process("worker", prom_settings, kafka.bootstrap, tmp_path).wait_ready())
        wait_until(lambda: open_instances(workers[1]) == want, timeout=90,
                   what="open instances recounted after the restart")  # fmt: skip
        # And they move on from there: one customer pays.
        paid = track("p0", t0 + 2, "Slow Paid", f"{unique}-0")
        status, body = post(f"{collector.url}/v1/batch", orjson.dumps({"batch": [paid]}))
        assert status == 200, body
        wait_until(lambda: open_instances(workers[1]) == {**want, "cart": 1.0}, timeout=60,
                   what="the conversion counted after the restart")  # fmt: skip
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.stop()
        collector.stop()
