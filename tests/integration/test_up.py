"""The README's main command: ``tracker up`` brings the pipeline up, ``tracker query`` reads it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.integration.processes import post, wait_until

pytestmark = pytest.mark.integration


def _env(data_dir: Path, unique: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env.update(
        TRACKER_DATA_DIR=str(data_dir),
        TRACKER_KAFKA_PORT="0",
        TRACKER_COLLECTOR_PORT="0",
        TRACKER_WORKER_PORT="0",
        TRACKER_APP_ID=f"up-{unique}",
        TRACKER_KAFKA_HEAP="384m",
    )
    return env


def _tracker_query(env: dict[str, str], sql: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "query", sql, "--format", "json"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout


def test_up_then_post_then_query(tmp_path: Path, unique: str) -> None:
    data_dir = tmp_path / "data"
    env = _env(data_dir, unique)
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "tracker.cli", "up"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        run_file = data_dir / "run.json"
        run = wait_until(
            lambda: run_file.exists() and orjson.loads(run_file.read_bytes()),
            timeout=120, what="tracker up to write run.json",
        )  # fmt: skip
        batch = {"batch": [{"type": "track", "messageId": f"up-{unique}", "userId": "c-1",
                            "event": "Signed Up", "properties": {"plan": "pro"}}]}  # fmt: skip
        posted = time.monotonic()
        assert post(f"{run['collector']}/v1/batch", orjson.dumps(batch)) == (200, {"success": True})
        sql = "SELECT message_id, user_id, event, properties FROM tracker.touchpoints"
        rows = wait_until(
            lambda: orjson.loads(_tracker_query(env, sql)), timeout=30, what="row via tracker query"
        )
        print(f"queryable with `tracker query` {time.monotonic() - posted:.2f}s after the POST")
        expected = [{"message_id": f"up-{unique}", "user_id": "c-1", "event": "Signed Up",
                     "properties": '{"plan":"pro"}'}]  # fmt: skip
        assert rows == expected
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(60)
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert code == 0, output
    assert "Touchpoint Tracker is running." in output
    assert not (data_dir / "run.json").exists()
    # With nothing running, the same command opens the warehouse directory itself.
    assert orjson.loads(_tracker_query(env, sql)) == expected
