"""The journey report: funnels, drop-off and conversion rates, pain before drop-offs, time to
convert — read from ``journey_results`` with ``FINAL`` — and how it compares with a ground truth.

Every query takes a ``query(sql) -> QueryResult`` callable, so the same report runs through a
running worker's ``/query`` endpoint or straight on the warehouse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tracker.core.journeys.definition import Journey
from tracker.warehouse.client import QueryResult

Query = Callable[[str], QueryResult]

# Medians of time to convert come from event times, which carry each request's network latency;
# the ground truth has the planned times. Counts must match exactly, times within this.
CONVERT_TOLERANCE_MS = 500


def results_sql(db: str) -> str:
    return (
        f"SELECT journey, kind, stage, count() AS n FROM {db}.journey_results FINAL "
        "GROUP BY journey, kind, stage"
    )


def pain_sql(db: str) -> str:
    return (
        f"SELECT journey, stage, signal, count() AS n FROM {db}.journey_results FINAL "
        "ARRAY JOIN pain AS signal WHERE kind = 'dropoff' GROUP BY journey, stage, signal"
    )


def convert_sql(db: str) -> str:
    return (
        f"SELECT journey, quantileExact(0.5)(duration_ms) AS median_ms, "
        f"quantileExact(0.9)(duration_ms) AS p90_ms FROM {db}.journey_results FINAL "
        "WHERE kind = 'conversion' GROUP BY journey"
    )


def dropoffs_sql(db: str) -> str:
    return (
        f"SELECT journey, customer, stage, pain, love FROM {db}.journey_results FINAL "
        "WHERE kind = 'dropoff' ORDER BY journey, customer, stage"
    )


def recent_dropoffs_sql(db: str, limit: int = 5) -> str:
    return (
        f"SELECT journey, stage, customer, pain FROM {db}.journey_results FINAL "
        f"WHERE kind = 'dropoff' ORDER BY inserted_at DESC, customer LIMIT {limit}"
    )


@dataclass
class StageFigures:
    stage: str
    entered: int = 0
    dropoffs: int = 0
    recoveries: int = 0
    pain: dict[str, int] = field(default_factory=dict)

    def went_on(self, nxt: StageFigures | None) -> float | None:
        """Share of those who entered this stage that entered the next one."""
        if nxt is None or not self.entered:
            return None
        return nxt.entered / self.entered

    @property
    def dropoff_rate(self) -> float | None:
        return self.dropoffs / self.entered if self.entered else None


@dataclass
class JourneyFigures:
    journey: str
    stages: list[StageFigures]
    conversions: int = 0
    median_convert_ms: int | None = None
    p90_convert_ms: int | None = None

    @property
    def conversion_rate(self) -> float | None:
        first = self.stages[0].entered
        return self.conversions / first if first else None


def counts(rows: QueryResult, journeys: tuple[Journey, ...]) -> dict[str, JourneyFigures]:
    """Funnels from ``results_sql`` rows, stages in the journeys' order."""
    out = {
        j.name: JourneyFigures(j.name, [StageFigures(s.name) for s in j.stages]) for j in journeys
    }
    for journey, kind, stage, n in rows.rows:
        figures = out.get(journey)
        if figures is None:
            continue
        if kind == "conversion":
            figures.conversions += int(n)
            continue
        for s in figures.stages:
            if s.stage == stage:
                attr = {"stage": "entered", "dropoff": "dropoffs", "recovery": "recoveries"}[kind]
                setattr(s, attr, getattr(s, attr) + int(n))
    return out


def build(query: Query, db: str, journeys: tuple[Journey, ...]) -> dict[str, JourneyFigures]:
    out = counts(query(results_sql(db)), journeys)
    for journey, stage, signal, n in query(pain_sql(db)).rows:
        if journey in out:
            for s in out[journey].stages:
                if s.stage == stage:
                    s.pain[signal] = int(n)
    for journey, median, p90 in query(convert_sql(db)).rows:
        if journey in out:
            out[journey].median_convert_ms = int(median)
            out[journey].p90_convert_ms = int(p90)
    return out


def compare(measured: dict[str, JourneyFigures], truth: dict[str, Any]) -> tuple[int, list[str]]:
    """(figures compared, mismatches) against ``Truth.funnel()``."""
    checked, wrong = 0, []

    def check(what: str, got: Any, want: Any, ok: bool | None = None) -> None:
        nonlocal checked
        checked += 1
        if not (got == want if ok is None else ok):
            wrong.append(f"{what}: measured {got}, truth {want}")

    for name, want in truth.items():
        got = measured.get(name)
        if got is None:
            wrong.append(f"{name}: no results")
            continue
        for g, w in zip(got.stages, want["stages"], strict=True):
            where = f"{name}/{g.stage}"
            check(f"{where} entered", g.entered, w["entered"])
            check(f"{where} drop-offs", g.dropoffs, w["dropoffs"])
            check(f"{where} recoveries", g.recoveries, w["recoveries"])
            check(f"{where} pain", g.pain, w["pain"])
        check(f"{name} conversions", got.conversions, want["conversions"])
        m, t = got.median_convert_ms, want["median_convert_ms"]
        close = (m is None) == (t is None) and (
            m is None or t is None or abs(m - t) <= CONVERT_TOLERANCE_MS
        )
        check(f"{name} median time to convert (ms, ±{CONVERT_TOLERANCE_MS})", m, t, close)
    return checked, wrong


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:5.1f}%"


def _seconds(ms: int | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f} s"


def top_pain(stage: StageFigures, n: int = 3) -> list[tuple[str, int]]:
    return sorted(stage.pain.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def render_text(figures: dict[str, JourneyFigures], width: int = 30) -> str:
    lines: list[str] = []
    for j in figures.values():
        top = max((s.entered for s in j.stages), default=0) or 1
        lines.append(
            f"{j.journey}: {j.conversions} converted of {j.stages[0].entered} "
            f"({_pct(j.conversion_rate).strip()}), median time to convert "
            f"{_seconds(j.median_convert_ms)} (p90 {_seconds(j.p90_convert_ms)})"
        )
        lines.append(
            f"  {'stage':<16}{'':<{width}} {'entered':>7} {'went on':>7} "
            f"{'drop-offs':>9} {'rate':>6} {'recovered':>9}  pain before drop-off"
        )
        for i, s in enumerate(j.stages):
            nxt = j.stages[i + 1] if i + 1 < len(j.stages) else None
            bar = "#" * round(width * s.entered / top)
            pain = ", ".join(f"{name} {n}" for name, n in top_pain(s))
            lines.append(
                f"  {s.stage:<16}{bar:<{width}} {s.entered:>7} {_pct(s.went_on(nxt)):>7} "
                f"{s.dropoffs:>9} {_pct(s.dropoff_rate):>6} {s.recoveries:>9}  {pain}"
            )
        lines.append("")
    return "\n".join(lines)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def funnel_chart(j: JourneyFigures) -> str:
    """One funnel: a bar per stage (entered, centred), its drop-offs in red, and the figures.

    Plain HTML and CSS rather than a fixed-size drawing: the names and figures are text that wraps,
    and the bars take a share of whatever width there is, so nothing is cut at any page width.
    """
    top = max((s.entered for s in j.stages), default=0) or 1
    parts = [f'<div class="funnel" role="img" aria-label="funnel of {_esc(j.journey)}">']
    for s in j.stages:
        share = 100 * s.entered / top
        dropped = 100 * s.dropoffs / s.entered if s.entered else 0
        parts.append(
            f'<div class="stage"><span class="name">{_esc(s.stage)}</span>'
            f'<span class="bar"><span class="fill" style="width:{share:.1f}%">'
            f'<span class="drop" style="width:{dropped:.1f}%" title="drop-offs"></span>'
            f'</span></span><span class="nums">{s.entered} entered, {s.dropoffs} dropped, '
            f"{s.recoveries} back</span></div>"
        )
    parts.append("</div>")
    return "".join(parts)


def render_html(
    figures: dict[str, JourneyFigures],
    *,
    title: str,
    checked: int,
    mismatches: list[str],
    notes: list[str],
) -> str:
    verdict = (
        f'<p class="ok">All {checked} figures match the ground truth.</p>'
        if not mismatches
        else f'<p class="bad">{len(mismatches)} of {checked} figures differ from the ground '
        "truth:</p><ul>" + "".join(f"<li>{_esc(m)}</li>" for m in mismatches) + "</ul>"
    )
    body = [f"<h1>{_esc(title)}</h1>", verdict]
    body += [f"<p>{_esc(n)}</p>" for n in notes]
    for j in figures.values():
        body.append(f"<section><h2>{_esc(j.journey)}</h2>")
        body.append(
            f"<p>{j.conversions} converted of {j.stages[0].entered} "
            f"({_pct(j.conversion_rate).strip()}); median time to convert "
            f"{_seconds(j.median_convert_ms)}, p90 {_seconds(j.p90_convert_ms)}.</p>"
        )
        body.append(funnel_chart(j))
        body.append(
            '<div class="scroll"><table><tr><th>stage</th><th>entered</th><th>went on</th>'
            "<th>drop-offs</th><th>drop-off rate</th><th>recovered</th>"
            "<th>top pain before drop-off</th></tr>"
        )
        for i, s in enumerate(j.stages):
            nxt = j.stages[i + 1] if i + 1 < len(j.stages) else None
            pain = ", ".join(f"{_esc(name)} ({n})" for name, n in top_pain(s))
            body.append(
                f"<tr><td>{_esc(s.stage)}</td><td>{s.entered}</td><td>{_pct(s.went_on(nxt))}</td>"
                f"<td>{s.dropoffs}</td><td>{_pct(s.dropoff_rate)}</td><td>{s.recoveries}</td>"
                f"<td>{pain}</td></tr>"
            )
        body.append("</table></div></section>")
    style = (
        "body{font-family:system-ui,sans-serif;margin:1em;max-width:960px;line-height:1.4}"
        "@media (min-width:40em){body{margin:2em}}"
        ".scroll{overflow-x:auto}"
        "table{border-collapse:collapse}td,th{padding:2px 10px;text-align:right}"
        "td:first-child,th:first-child,td:last-child,th:last-child{text-align:left}"
        ".ok{color:#2a7a2a;font-weight:bold}.bad{color:#b00;font-weight:bold}"
        # A stage: name, bar and figures side by side where there is room, stacked where not.
        ".funnel{margin:1em 0}.stage{display:grid;align-items:center;gap:.1em .75em;"
        "grid-template-columns:minmax(6em,9em) minmax(6em,1fr) minmax(max-content,14em);"
        "margin:.3em 0}"
        "@media (max-width:36em){.stage{grid-template-columns:1fr}}"
        "h1,h2,.name{overflow-wrap:anywhere}.nums{font-size:.9em;color:#333}"
        ".bar{display:block;height:1.4em}"
        ".fill{display:flex;justify-content:flex-end;height:100%;margin:0 auto;"
        "background:#4c78a8}.drop{display:block;height:100%;background:#e45756}"
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
