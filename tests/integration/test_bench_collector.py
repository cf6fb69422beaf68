"""``tracker bench collector`` with tiny numbers: it runs end to end and its figures are sane.
No timing is asserted: speed is what the benchmark reports, not what a test checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracker.kafka.broker import EmbeddedKafka

pytestmark = pytest.mark.integration


def test_bench_collector_reports_every_figure(kafka: EmbeddedKafka, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env.update(TRACKER_KAFKA_BOOTSTRAP=kafka.bootstrap, TRACKER_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "bench", "collector", "--seconds", "1",
         "--rate", "400", "--connections", "4", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "collector events/s (max; baseline: bare producer)" in done.stdout
    assert "collector p99 s at fixed load" in done.stdout
    result = json.loads(out.read_text())
    assert result["collector_events_per_s"] > 0
    assert result["baseline_events_per_s"] > 0
    assert result["ratio"] == round(
        result["collector_events_per_s"] / result["baseline_events_per_s"], 3
    )
    assert result["fixed_offered_events_per_s"] == 400
    assert result["collector_failed_requests"] == result["fixed_failed_requests"] == 0
    assert 0 < result["p50_s"] <= result["p99_s"] <= result["max_s"]
    assert result["targets"] == {"collector_events_per_s": 30_000, "p99_s": 0.025}
