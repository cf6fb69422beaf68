"""``tracker bench collector``: one collector process under load, beside a bare aiokafka producer.

Starts an embedded Kafka (unless ``TRACKER_KAFKA_BOOTSTRAP`` names one) and one collector process,
then runs the load generator (:mod:`tracker.bench.load`) as a third process: batches of realistic
browser events over keep-alive HTTP, (a) as fast as the collector answers, (b) at a fixed offered
load, open loop, for request latency; then the same batches from a bare aiokafka producer
(acks=all) straight to a topic, the ceiling the collector is compared with.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import orjson

from tracker import readyfile
from tracker.bench.broker import start_kafka
from tracker.errors import TrackerError
from tracker.kafka.client import ensure_topics
from tracker.settings import Settings

TARGETS = {"collector_events_per_s": 30_000, "p99_s": 0.025}


def run(
    settings: Settings,
    *,
    seconds: float,
    rate: int,
    batch: int = 20,
    connections: int = 32,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tracker-bench-collector-"))
    kafka, bootstrap = start_kafka(settings, workdir)
    run_id = uuid.uuid4().hex[:8]
    topic, baseline_topic = f"bench-collector-{run_id}", f"bench-producer-{run_id}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env.update(TRACKER_KAFKA_BOOTSTRAP=bootstrap, TRACKER_TOPIC_TOUCHPOINTS=topic,
               TRACKER_TOPIC_DEADLETTER=f"{topic}-deadletter", TRACKER_LOG_LEVEL="warning",
               TRACKER_DATA_DIR=str(workdir / "data"))  # fmt: skip
    collector = None
    try:
        asyncio.run(ensure_topics(settings, bootstrap, [topic, baseline_topic]))
        ready = workdir / "collector.ready"
        with (workdir / "collector.log").open("wb") as log:
            collector = subprocess.Popen(
                [sys.executable, "-m", "tracker.cli", "collector", "--port", "0",
                 "--ready-file", str(ready)],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        url = readyfile.wait(ready, timeout=60, alive=lambda: collector.poll() is None)["url"]
        spec = {"url": url, "bootstrap": bootstrap, "baseline_topic": baseline_topic,
                "seconds": seconds, "rate": rate, "batch": batch, "connections": connections,
                "open_connections": 64}  # fmt: skip
        load = subprocess.run(
            [sys.executable, "-m", "tracker.bench.load", orjson.dumps(spec).decode()],
            capture_output=True, timeout=seconds * 3 + 120, env=env,
        )  # fmt: skip
        if load.returncode != 0:
            raise TrackerError(f"the load generator failed:\n{load.stderr.decode()[-3000:]}")
        figures = orjson.loads(load.stdout.splitlines()[-1])
    finally:
        if collector is not None:
            collector.terminate()
            collector.wait(60)
        if kafka is not None:
            kafka.stop()
    shutil.rmtree(workdir, ignore_errors=True)  # kept, with the collector's log, on a failure
    rate_collector = figures["max"]["events_per_s"]
    rate_baseline = figures["baseline"]["events_per_s"]
    return {
        "batch": batch,
        "connections": connections,
        "seconds_per_phase": seconds,
        "collector_events_per_s": rate_collector,
        "collector_failed_requests": figures["max"]["failed"],
        "baseline_events_per_s": rate_baseline,
        "ratio": round(rate_collector / rate_baseline, 3) if rate_baseline else None,
        "fixed_offered_events_per_s": figures["fixed"]["offered_events_per_s"],
        "fixed_achieved_events_per_s": figures["fixed"]["achieved_events_per_s"],
        "fixed_failed_requests": figures["fixed"]["failed"],
        "p50_s": figures["fixed"]["p50_s"],
        "p99_s": figures["fixed"]["p99_s"],
        "max_s": figures["fixed"]["max_s"],
        "targets": TARGETS,
    }
