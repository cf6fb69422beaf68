"""The package as a user gets it: a wheel in a fresh virtualenv, run from an empty directory.

Builds the wheel from this checkout, installs it (with the ``embedded`` extra) into a virtualenv
outside the checkout, and runs the commands the image and the compose stack run: the embedded
broker (``tracker kafka``), ``tracker collector`` and ``tracker worker`` against it by bootstrap
address, each from an empty working directory with no TRACKER_* setting but ports and addresses.
A customer's touchpoints then become a journey result that the worker's /query returns.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from tests.integration.processes import post, query, terminate, wait_until
from tracker.kafka.broker import free_port
from tracker.settings import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _run(*args: str | Path, timeout: float = 600, **kwargs: object) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
        check=False, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ directory of a fresh virtualenv with the wheel built from this checkout."""
    root = tmp_path_factory.mktemp("installed")
    wheels = root / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, REPO_ROOT)
    (wheel,) = wheels.glob("touchpoint_tracker-*.whl")
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", venv)
    out = _run(venv / "bin" / "python", "-m", "pip", "install", "-q", f"{wheel}[embedded]")
    assert "warning" not in out.lower(), out
    return venv / "bin"


class _Child:
    def __init__(self, bin_dir: Path, command: list[str], env: dict[str, str], cwd: Path) -> None:
        cwd.mkdir(parents=True)
        self.log = cwd / "output.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(bin_dir / "tracker"), *command], env=env, cwd=cwd, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        terminate(self.proc, 60)


@pytest.fixture
def children() -> Iterator[list[_Child]]:
    started: list[_Child] = []
    yield started
    for child in reversed(started):
        child.stop()


def _healthy(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_the_installed_package_runs_the_pipeline_from_an_empty_directory(
    installed: Path, tmp_path: Path, children: list[_Child]
) -> None:
    kafka_port, collector_port, worker_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # jars fetched afresh, outside the venv
    env["TRACKER_KAFKA_PORT"] = str(kafka_port)
    env["TRACKER_KAFKA_HEAP"] = "384m"
    kafka = _Child(installed, ["kafka"], env, tmp_path / "kafka")
    children.append(kafka)
    wait_until(lambda: not kafka.alive() or "ready in" in kafka.output(), timeout=300,
               what="the embedded broker")  # fmt: skip
    assert kafka.alive(), kafka.output()

    roles = {**env, "TRACKER_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}"}
    worker = _Child(installed, ["worker"], {**roles, "TRACKER_WORKER_PORT": str(worker_port)},
                    tmp_path / "worker")  # fmt: skip
    collector = _Child(installed, ["collector"],
                       {**roles, "TRACKER_COLLECTOR_PORT": str(collector_port)},
                       tmp_path / "collector")  # fmt: skip
    children += [worker, collector]
    worker_url = f"http://127.0.0.1:{worker_port}"
    collector_url = f"http://127.0.0.1:{collector_port}"
    for name, child, url in (
        ("worker", worker, worker_url),
        ("collector", collector, collector_url),
    ):
        wait_until(lambda c=child, u=url: not c.alive() or _healthy(u), timeout=120, what=name)
        assert child.alive(), f"{name} exited:\n{child.output()}"

    now = datetime.now(UTC)
    steps = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed"]
    batch = {
        "batch": [
            {
                "type": "track",
                "messageId": f"installed-{i}",
                "userId": "cust-installed",
                "event": event,
                "timestamp": (now + timedelta(seconds=i)).isoformat(),
            }
            for i, event in enumerate(steps)
        ]
    }
    assert post(f"{collector_url}/v1/batch", orjson.dumps(batch)) == (200, {"success": True})

    sql = (
        "SELECT journey, kind FROM tracker.journey_results FINAL "
        "WHERE customer = 'cust-installed' AND kind = 'conversion'"
    )
    began = time.monotonic()
    rows = wait_until(lambda: query(worker_url, sql), timeout=120, what="the journey result")
    print(f"journey result queryable {time.monotonic() - began:.1f}s after the POST")
    assert rows == [{"journey": "ecommerce_purchase", "kind": "conversion"}]

    # Everything the roles wrote is in their working directories and the cache, none in the venv.
    assert (tmp_path / "worker" / ".tracker-data" / "clickhouse").is_dir()
    assert list((tmp_path / "cache" / "touchpoint-tracker" / "kafka").glob("kafka-*/libs/*.jar"))
    assert not list(installed.parent.rglob("*.jar"))
