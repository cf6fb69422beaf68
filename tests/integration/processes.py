"""Run the product's own commands as child processes, the way users and ``tracker up`` do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tracker import readyfile
from tracker.settings import Settings


def settings_env(settings: Settings, bootstrap: str) -> dict[str, str]:
    """The environment that makes a child process read exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"TRACKER_{name.upper()}"] = str(value)
    env["TRACKER_KAFKA_BOOTSTRAP"] = bootstrap
    return env


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Process:
    """One ``tracker <command>`` child with its output in a log file."""

    def __init__(self, command: str, settings: Settings, bootstrap: str, workdir: Path) -> None:
        self.command = command
        self.ready_file = workdir / f"{command}-{time.monotonic_ns()}.ready"
        self.log_path = workdir / f"{command}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracker.cli", command, "--port", "0",
             "--ready-file", str(self.ready_file)],
            env=settings_env(settings, bootstrap),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = ""

    def wait_ready(self, timeout: float = 60.0) -> Process:
        try:
            info = readyfile.wait(
                self.ready_file, timeout=timeout, alive=lambda: self.proc.poll() is None
            )
        except (RuntimeError, TimeoutError) as exc:
            output = self.output()
            self.stop()
            raise AssertionError(f"{self.command} did not start: {exc}\n{output}") from None
        self.url = info["url"]
        return self

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self, timeout: float = 30.0) -> int:
        terminate(self.proc, timeout)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """A crash: SIGKILL, no chance to commit or flush anything."""
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {last!r}")


def query(worker_url: str, sql: str) -> list[dict[str, Any]]:
    """Rows of a read-only query through the worker's endpoint, as dicts."""
    import urllib.request

    req = urllib.request.Request(f"{worker_url}/query", data=sql.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = orjson.loads(resp.read())
    return [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]


def metric(process: Process, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` with these ``labels`` (and any others) on
    ``process``'s /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"{process.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((f"{name} ", f"{name}{{")) and all(w in line for w in wanted)
    )


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())
