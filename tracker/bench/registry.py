"""Every benchmark in one table: ``tracker bench all``.

A benchmark is registered as a function from the settings to rows (figure, value, baseline,
ratio, target); adding one is one line in :data:`BENCHES`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracker.errors import TrackerError
from tracker.settings import Settings


@dataclass(frozen=True)
class Row:
    figure: str
    value: float
    baseline: float | None = None  # measured in the same run, where there is one
    ratio: float | None = None
    target: float | None = None


Bench = Callable[[Settings], list[Row]]


def worker_rows(result: dict[str, Any]) -> list[Row]:
    targets = result["targets"]
    rows = [
        Row(
            "worker events/s",
            result["worker_events_per_s"],
            result["baseline_events_per_s"],
            result["ratio"],
            targets["worker_events_per_s"],
        ),
        Row("worker events per CPU second", result["worker_events_per_cpu_s"]),
        Row("worker open journey instances at the end", result["open_instances"]),
        Row(
            "worker bytes per open instance",
            result["bytes_per_open_instance"],
            target=targets["bytes_per_open_instance"],
        ),
    ]
    if "core_alone" in result:  # the worker's ceiling: its Python work without any I/O
        figure = "worker's journey core alone: events per CPU second"
        rows.append(Row(figure, result["core_alone"]["events_per_cpu_s"],
                        target=targets["worker_events_per_s"]))  # fmt: skip
    if result.get("bytes_per_added_instance") is not None:
        figure = "worker bytes per instance, half open -> all open"
        rows.append(Row(figure, result["bytes_per_added_instance"]))
    for measure, model in result.get("model", {}).items():  # fitted to wall and to CPU seconds
        for term in ("message", "customer_batch", "event"):
            figure = f"worker cost ({measure}): us per {term.replace('_', ' ')}"
            rows.append(Row(figure, model[f"us_per_{term}"]))
    return rows


def e2e_rows(result: dict[str, Any]) -> list[Row]:
    rows = []
    target = result["target_p99_s"]
    for r in result["loads"]:
        at = f"e2e @{r['offered_per_s']}/s"
        offered = r["offered_per_s"]
        rows += [
            Row(
                f"{at} received events/s (baseline: due)",
                r["achieved_per_s"],
                r["due_in_window_per_s"],
                round(r["achieved_per_s"] / max(r["due_in_window_per_s"], 1), 3),
                offered,
            ),
            Row(f"{at} accepted->queryable p50 s", r["ingest_p50_s"]),
            Row(f"{at} accepted->queryable p99 s", r["ingest_p99_s"], target=target),
            Row(f"{at} deadline->drop-off p50 s", r["dropoff_p50_s"]),
            Row(f"{at} deadline->drop-off p99 s", r["dropoff_p99_s"], target=target),
        ]
    return rows


def collector_rows(result: dict[str, Any]) -> list[Row]:
    targets = result["targets"]
    return [
        Row(
            "collector events/s (max; baseline: bare producer)",
            result["collector_events_per_s"],
            result["baseline_events_per_s"],
            result["ratio"],
            targets["collector_events_per_s"],
        ),
        Row("collector events/s achieved at fixed load", result["fixed_achieved_events_per_s"],
            target=result["fixed_offered_events_per_s"]),
        Row("collector p50 s at fixed load", result["p50_s"]),
        Row("collector p99 s at fixed load", result["p99_s"], target=targets["p99_s"]),
        Row("collector failed requests", result["collector_failed_requests"]
            + result["fixed_failed_requests"], target=0),
    ]  # fmt: skip


def restart_rows(result: dict[str, Any]) -> list[Row]:
    rows = []
    for r in result["runs"]:
        at = f"restart @{r['customers']:,} customers"
        rows += [
            Row(f"{at}: first raw row s (baseline: memory)", r["restart_s"], r["baseline_s"],
                r["ratio"], r["target_s"]),
            Row(f"{at}: first journey result s", r["restart"]["journey_s"],
                r["memory"].get("journey_s")),
        ]  # fmt: skip
    return rows


def history_rows(result: dict[str, Any]) -> list[Row]:
    rows = []
    base = result["runs"][0]
    for r in result["runs"]:
        at = f"history @{r['touchpoints']:,} touchpoints"
        rows += [
            Row(f"{at}: us per added touchpoint", r["us_per_add"], base["us_per_add"], r["ratio"],
                result["target_ratio"]),
            Row(f"{at}: state bytes (target: the bound)", r["state_bytes"],
                target=result["bound_bytes"]),
        ]  # fmt: skip
    return rows


def identity_rows(result: dict[str, Any]) -> list[Row]:
    base = result["baseline_links_per_s"]
    return [
        Row("identity agent: new-pair links/s (baseline: bare)", result["new_pair_links_per_s"],
            base, result["new_pair_ratio"]),
        Row("identity agent: repeat links/s", result["repeat_links_per_s"], base,
            result["repeat_ratio"]),
    ] + [
        Row(f"journey core: us per login moving {n} touchpoints", us)
        for n, us in result.get("login_us_by_anonymous_touchpoints", {}).items()
    ]  # fmt: skip


def _collector(settings: Settings) -> list[Row]:
    from tracker.bench import collector

    return collector_rows(collector.run(settings, seconds=10, rate=5000, batch=20, connections=32))


def _worker(settings: Settings) -> list[Row]:
    from tracker.bench import worker

    return worker_rows(
        worker.run(settings, events=200_000, customers=50_000, per_request=5, model_events=100_000)
    )


def _e2e(settings: Settings) -> list[Row]:
    from tracker.bench import e2e

    return e2e_rows(e2e.run(settings, loads=[1000, 5000], seconds=15))


def _restart(settings: Settings) -> list[Row]:
    from tracker.bench import restart

    runs = [restart.run(settings, customers=n) for n in (100_000, 1_000_000)]
    return restart_rows({"runs": runs})


def _history(settings: Settings) -> list[Row]:
    from tracker.bench import history

    return history_rows(history.run(settings))


def _identity(settings: Settings) -> list[Row]:
    from tracker.bench import identity

    return identity_rows(identity.run(settings, links=100_000))


BENCHES: dict[str, Bench] = {
    "collector": _collector,
    "worker": _worker,
    "e2e": _e2e,
    "restart": _restart,
    "history": _history,
    "identity": _identity,
}


def _cell(value: float | None, width: int) -> str:
    if value is None:
        return " " * width
    text = f"{value:,.3f}" if isinstance(value, float) and abs(value) < 100 else f"{value:,.0f}"
    return text.rjust(width)


def table(rows: list[Row]) -> str:
    lines = [f"{'figure':<50}{'value':>12}{'baseline':>12}{'ratio':>8}{'target':>10}"]
    for r in rows:
        lines.append(
            f"{r.figure:<50}{_cell(r.value, 12)}{_cell(r.baseline, 12)}"
            f"{_cell(r.ratio, 8)}{_cell(r.target, 10)}"
        )
    return "\n".join(lines)


def run_all(settings: Settings, json_path: Path | None) -> tuple[list[Row], list[str]]:
    """Run every registered benchmark; one that fails is reported and the others still run."""
    rows: list[Row] = []
    failed: list[str] = []
    report: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(), "benches": {}}
    for name, bench in BENCHES.items():
        began = time.monotonic()
        try:
            got = bench(settings)
        except TrackerError as exc:
            failed.append(f"{name}: {exc}")
            report["benches"][name] = {"error": str(exc)}
            continue
        rows += got
        report["benches"][name] = {
            "seconds": round(time.monotonic() - began, 1),
            "rows": [asdict(r) for r in got],
        }
    report["finished_at"] = datetime.now(UTC).isoformat()
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1))
    return rows, failed
