"""``tracker kafka``: the embedded broker in the foreground, stopped by a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.processes import wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_tracker_kafka_runs_until_a_signal_and_takes_the_broker_down(
    tmp_path: Path, sig: signal.Signals
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env["TRACKER_KAFKA_HEAP"] = "256m"
    log = (tmp_path / "out.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracker.cli", "kafka", "--port", "0", "--data-dir",
         str(tmp_path / "k")],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until(lambda: "Ctrl-C stops it." in (tmp_path / "out.log").read_text(), timeout=90,
                   what="the broker to be ready")  # fmt: skip
        broker_pid = _broker_pid(tmp_path / "k")
        proc.send_signal(sig)
        assert proc.wait(60) == 0
        wait_until(lambda: not Path(f"/proc/{broker_pid}").exists(), timeout=30,
                   what="the JVM to exit")  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def _broker_pid(data_dir: Path) -> int:
    out = subprocess.run(["pgrep", "-f", f"{data_dir}/server.properties"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return int(out.stdout.split()[0])
