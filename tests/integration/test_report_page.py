"""The demo's HTML report is readable at any width: checked in Debian's headless Chromium.

At a phone's, a tablet's and a desktop's width every stage name and figure is shown whole (not cut,
not outside the window), the bars fit their track and the page never scrolls sideways; a
full-page screenshot of each width is written beside the test's files.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from playwright.async_api import Browser

from tracker.core.journeys.definition import load
from tracker.demo import report
from tracker.settings import REPO_ROOT
from tracker.warehouse.client import QueryResult

pytestmark = pytest.mark.integration

WIDTHS = (320, 768, 1280)


def _page_html() -> str:
    journeys = load(REPO_ROOT / "deploy" / "journeys.demo.yaml")
    # Large counts make the longest labels ("217,000 entered, ..."): the case that was cut.
    rows = [("ecommerce_purchase", "stage", "product", 217_000),
            ("ecommerce_purchase", "stage", "cart", 88_000),
            ("ecommerce_purchase", "stage", "checkout", 61_000),
            ("ecommerce_purchase", "stage", "purchase", 40_000),
            ("ecommerce_purchase", "dropoff", "product", 129_000),
            ("ecommerce_purchase", "recovery", "product", 12_345),
            ("ecommerce_purchase", "dropoff", "cart", 27_000),
            ("ecommerce_purchase", "dropoff", "checkout", 21_000),
            ("ecommerce_purchase", "conversion", "", 40_000)]  # fmt: skip
    figures = report.counts(QueryResult(["journey", "kind", "stage", "n"], rows), journeys)
    return report.render_html(
        figures, title="Touchpoint Tracker demo report", checked=30, mismatches=[], notes=[]
    )


# Per width: what sticks out of the window or is cut inside its box, and the smallest font size.
_MEASURE = """() => {
  const vw = window.innerWidth;
  const problems = [];
  for (const el of document.querySelectorAll('.name, .nums, h1, h2, p, .bar')) {
    const r = el.getBoundingClientRect();
    if (r.left < -0.5 || r.right > vw + 0.5) problems.push(`${el.className || el.tagName} `
      + `"${el.textContent}" spans ${r.left.toFixed(0)}..${r.right.toFixed(0)} of ${vw}`);
    if (el.scrollWidth > el.clientWidth + 1) problems.push(`${el.className} "${el.textContent}" `
      + `cut: ${el.scrollWidth} > ${el.clientWidth}`);
  }
  for (const fill of document.querySelectorAll('.fill')) {
    const bar = fill.parentElement.getBoundingClientRect(), r = fill.getBoundingClientRect();
    const empty = parseFloat(fill.style.width) === 0;
    if ((!empty && r.width < 1) || r.left < bar.left - 0.5 || r.right > bar.right + 0.5)
      problems.push(`bar ${r.left.toFixed(0)}..${r.right.toFixed(0)} outside its track`);
  }
  const sizes = [...document.querySelectorAll('.name, .nums')]
    .map(el => parseFloat(getComputedStyle(el).fontSize));
  return {problems, pageWidth: document.documentElement.scrollWidth, vw,
          smallestFont: Math.min(...sizes), stages: sizes.length / 2};
}"""


def _png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


async def test_report_labels_and_bars_fit_at_every_width(browser: Browser, tmp_path: Path) -> None:
    page_file = tmp_path / "report.html"
    page_file.write_text(_page_html())
    for width in WIDTHS:
        context = await browser.new_context(viewport={"width": width, "height": 800})
        page = await context.new_page()
        await page.goto(page_file.as_uri())
        found = await page.evaluate(_MEASURE)
        shot = tmp_path / f"report-{width}.png"
        await page.screenshot(path=str(shot), full_page=True)
        await context.close()
        assert not found["problems"], f"at {width}px: {found['problems']}"
        assert found["pageWidth"] <= width, f"at {width}px the page scrolls sideways"
        assert found["smallestFont"] >= 12, f"at {width}px"
        assert found["stages"] >= 4
        assert _png_size(shot)[0] == width
    assert "217000 entered, 129000 dropped, 12345 back" in page_file.read_text()
