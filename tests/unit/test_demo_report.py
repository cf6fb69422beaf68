"""The demo's report and the benchmark table, on figures given directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracker.bench import registry
from tracker.core.journeys.definition import load
from tracker.demo import report
from tracker.demo.live import LiveView, Snapshot, open_journeys
from tracker.errors import TrackerError
from tracker.settings import REPO_ROOT, Settings
from tracker.warehouse.client import QueryResult

JOURNEYS = load(REPO_ROOT / "deploy" / "journeys.demo.yaml")


def _figures() -> dict[str, report.JourneyFigures]:
    rows = QueryResult(
        ["journey", "kind", "stage", "n"],
        [
            ("ecommerce_purchase", "stage", "product", 10),
            ("ecommerce_purchase", "stage", "cart", 6),
            ("ecommerce_purchase", "stage", "checkout", 4),
            ("ecommerce_purchase", "stage", "purchase", 3),
            ("ecommerce_purchase", "dropoff", "product", 5),
            ("ecommerce_purchase", "recovery", "product", 1),
            ("ecommerce_purchase", "dropoff", "cart", 2),
            ("ecommerce_purchase", "dropoff", "checkout", 1),
            ("ecommerce_purchase", "conversion", "", 3),
        ],
    )
    return report.counts(rows, JOURNEYS)


def test_funnel_figures_and_rates() -> None:
    shop = _figures()["ecommerce_purchase"]
    product, cart = shop.stages[0], shop.stages[1]
    assert (product.entered, product.dropoffs, product.recoveries) == (10, 5, 1)
    assert product.went_on(cart) == 0.6 and product.dropoff_rate == 0.5
    assert shop.conversion_rate == 0.3
    # 10 started: 3 converted, 5 + 2 + 1 drop-offs of which 1 came back -> 7 gone, 0 open.
    assert open_journeys({"shop": shop}) == 0
    shop.stages[1].dropoffs = 1  # one fewer drop-off at the cart: that customer is still open
    assert open_journeys({"shop": shop}) == 1


def test_compare_names_every_figure_that_differs() -> None:
    figures = _figures()
    truth = {
        "ecommerce_purchase": {
            "stages": [
                {"stage": "product", "entered": 10, "dropoffs": 5, "recoveries": 1, "pain": {}},
                {"stage": "cart", "entered": 6, "dropoffs": 3, "recoveries": 0, "pain": {}},
                {"stage": "checkout", "entered": 4, "dropoffs": 1, "recoveries": 0, "pain": {}},
                {"stage": "purchase", "entered": 3, "dropoffs": 0, "recoveries": 0, "pain": {}},
            ],
            "conversions": 3,
            "median_convert_ms": None,
        }
    }
    checked, wrong = report.compare(figures, truth)
    assert checked == 4 * 4 + 2
    assert wrong == ["ecommerce_purchase/cart drop-offs: measured 2, truth 3"]


def test_html_page_is_self_contained_with_a_chart_per_journey() -> None:
    figures = _figures()
    html = report.render_html(figures, title="t <&>", checked=5, mismatches=[], notes=["n"])
    assert html.count('<div class="funnel"') == len(JOURNEYS)
    assert "t &lt;&amp;&gt;" in html and "All 5 figures match" in html
    assert "<script" not in html and "<link" not in html and "src=" not in html


def test_live_frame_and_plain_line() -> None:
    snap = Snapshot(
        "sending",
        12.0,
        60.0,
        40,
        500,
        41.0,
        _figures(),
        [("ecommerce_purchase", "cart", "user-1", ["shipping_cost_shock"])],
    )
    frame = LiveView(None, tty=True).frame(snap)  # type: ignore[arg-type]
    assert "12/60 s" in frame and "shipping_cost_shock" in frame and "product" in frame
    line = LiveView(None, tty=False).line(snap)  # type: ignore[arg-type]
    assert "sent 500 (41/s)" in line and "drop-offs 8" in line and "conversions 3" in line


def test_bench_all_runs_every_registered_bench_and_writes_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def good(settings: Settings) -> list[registry.Row]:
        return [registry.Row("events/s", 1200.0, 1000.0, 1.2, 1000.0)]

    def broken(settings: Settings) -> list[registry.Row]:
        raise TrackerError("no broker")

    monkeypatch.setattr(registry, "BENCHES", {"good": good, "broken": broken})
    path = tmp_path / "bench.json"
    rows, failed = registry.run_all(Settings(data_dir=tmp_path), path)
    assert [r.figure for r in rows] == ["events/s"]
    assert failed == ["broken: no broker"]
    written = json.loads(path.read_text())
    assert written["started_at"] and written["finished_at"]
    assert written["benches"]["good"]["rows"][0]["value"] == 1200.0
    assert written["benches"]["broken"] == {"error": "no broker"}
    assert "events/s" in registry.table(rows) and "1,200" in registry.table(rows)
