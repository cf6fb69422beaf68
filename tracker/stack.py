"""``tracker up``: the whole pipeline on one machine.

The embedded broker (unless ``TRACKER_KAFKA_BOOTSTRAP`` names a cluster), one collector process and
one worker process (which owns the embedded chdb warehouse). The endpoints are written to
``<data_dir>/run.json`` so that ``tracker query`` can reach the running warehouse.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tracker import readyfile
from tracker.errors import TrackerError
from tracker.kafka.broker import EmbeddedKafka
from tracker.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    url: str = ""


@dataclass
class Stack:
    settings: Settings
    kafka: EmbeddedKafka | None = None
    bootstrap: str = ""
    children: list[Child] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # extra settings for the child processes
    log_dir: Path | None = None  # children log to <log_dir>/<name>.log instead of the terminal

    def start(self, *, collector_port: int, worker_port: int, timeout: float = 120.0) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        s.run_file.unlink(missing_ok=True)
        if s.embedded_kafka:
            self.kafka = EmbeddedKafka(
                s.data_dir / "kafka",
                port=s.kafka_port,
                kafka_home=s.kafka_home,
                heap=s.kafka_heap,
                partitions=s.topic_partitions,
            )
            self.kafka.start()
            self.bootstrap = self.kafka.bootstrap
        else:
            self.bootstrap = s.kafka_bootstrap
        # The worker creates the topics and the schema; start it first.
        self._spawn("worker", "worker", worker_port, timeout)
        self._spawn("collector", "collector", collector_port, timeout)
        readyfile.write(
            s.run_file,
            pid=os.getpid(),
            kafka=self.bootstrap,
            **{child.name: child.url for child in self.children},
        )

    def _spawn(self, name: str, command: str, port: int, timeout: float) -> None:
        ready = self.settings.data_dir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        env = {**os.environ, **self.env, "TRACKER_KAFKA_BOOTSTRAP": self.bootstrap}
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tracker.cli", command, "--port", str(port),
             "--ready-file", str(ready)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
        )  # fmt: skip
        if log is not None:
            log.close()  # the child has its own descriptor
        child = Child(name, proc)
        self.children.append(child)
        try:
            child.url = readyfile.wait(ready, timeout=timeout, alive=lambda: proc.poll() is None)[
                "url"
            ]
        except (RuntimeError, TimeoutError) as exc:
            raise TrackerError(f"{name} did not start: {exc}") from exc

    def check(self) -> None:
        """Raise if any part has exited."""
        for child in self.children:
            if child.proc.poll() is not None:
                where = self.log_dir / f"{child.name}.log" if self.log_dir else "its output"
                raise TrackerError(
                    f"the {child.name} exited with code {child.proc.returncode}; see {where}"
                )

    def wait(self) -> None:
        """Block until Ctrl-C / SIGTERM or until any part exits on its own."""
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())

        def watch(proc: subprocess.Popen[bytes]) -> None:
            proc.wait()
            done.set()

        for child in self.children:
            threading.Thread(target=watch, args=(child.proc,), daemon=True).start()
        done.wait()
        for child in self.children:
            if child.proc.poll() is not None:
                log.error("event=child_exited name=%s code=%s", child.name, child.proc.returncode)

    def stop(self) -> None:
        # Collector first (no new data), then the worker (commits what it wrote), then Kafka.
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(30)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
        if self.kafka is not None:
            self.kafka.stop()
        self.settings.run_file.unlink(missing_ok=True)


def describe(stack: Stack) -> str:
    s = stack.settings
    lines = [
        "Touchpoint Tracker is running.",
        f"  kafka      {stack.bootstrap}" + ("  (embedded)" if stack.kafka else ""),
    ]
    for child in stack.children:
        lines.append(f"  {child.name:<10} {child.url}")
    where = s.clickhouse_dsn if not s.embedded_clickhouse else Path(s.data_dir, "clickhouse")
    lines += [
        f"  warehouse  {where if s.embedded_clickhouse else 'ClickHouse server'}",
        "",
        "Send touchpoints:  curl -X POST <collector>/v1/batch -H 'Content-Type: application/json' "
        "-d '{\"batch\": [...]}'",
        'Query them:        tracker query "SELECT type, event, count() FROM tracker.touchpoints '
        'GROUP BY ALL"',
        "Stop:              Ctrl-C",
    ]
    return "\n".join(lines)
