"""The embedded development broker: a real Apache Kafka (KRaft, one combined node) on loopback.

Jars come from Maven Central through the packaged ``kafka/pom.xml`` (tracker/defaults) into a
writable cache directory (``TRACKER_KAFKA_HOME``); the broker runs as a child JVM.
The same class backs ``tracker kafka``, ``tracker up`` and the tests' session fixture.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tracker import defaults
from tracker.errors import BrokerError

log = logging.getLogger(__name__)

_MAIN_CLASS = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"
_READY_TOPIC = "__tracker_ready"


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just handed out for ``host``; free unless someone races us for it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_jars(kafka_home: Path, *, timeout: float = 600.0) -> Path:
    """The broker's jars, resolved by Maven from the packaged pom into ``kafka_home`` once.

    Each pom gets its own ``kafka-<digest>`` directory, filled in a staging directory and renamed
    into place whole, so a half-fetched set is never used and processes fetching at the same time
    never delete each other's jars.
    """
    pom = defaults.path("kafka/pom.xml").read_bytes()
    home = kafka_home / f"kafka-{hashlib.sha256(pom).hexdigest()[:12]}"
    libs = home / "libs"
    if libs.is_dir():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven ('mvn') is needed to fetch the Kafka jars; install it (Debian: maven)"
        )
    staging = kafka_home / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        (staging / "pom.xml").write_bytes(pom)
        log.info("event=kafka_jars_resolve into=%s", home)
        proc = subprocess.run(
            [mvn, "-q", "-B", "-f", str(staging / "pom.xml"), "dependency:copy-dependencies"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise BrokerError(
                "Maven could not resolve the Kafka jars", log_tail=proc.stdout[-4000:]
            )
        try:
            staging.rename(home)
        except OSError:
            if not libs.is_dir():  # not a concurrent fetch that got there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return libs


def _listening(host: str, port: int) -> bool:
    """A plain TCP probe, so that waiting for the JVM does not flood the log with client errors."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def cluster_id(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A new KRaft cluster id: 16 random bytes, URL-safe base64, never beginning with ``-``.

    One id in 64 would begin with ``-`` (Kafka's own generator draws again too); such an id
    works, but tools that take it as a separate argument read it as an option.
    """
    while True:
        candidate = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def format_args(cluster: str, properties: Path) -> list[str]:
    """The storage tool's ``format`` arguments; ``--cluster-id=<id>`` stays one token."""
    return ["format", f"--cluster-id={cluster}", "-c", str(properties)]


@dataclass(frozen=True)
class ClusterNode:
    """One node's place in a multi-node KRaft cluster (every node is broker and controller)."""

    node_id: int
    controller_port: int
    voters: str  # controller.quorum.voters, the same for every node
    cluster_id: str
    replicas: int  # replication of internal and new topics; min.insync.replicas is 2 from 2 up


def cluster_nodes(count: int, host: str = "127.0.0.1") -> list[ClusterNode]:
    """The places of a ``count``-node cluster on free loopback ports."""
    ports = [free_port(host) for _ in range(count)]
    voters = ",".join(f"{n}@{host}:{port}" for n, port in enumerate(ports, start=1))
    cluster = cluster_id()
    return [ClusterNode(n, port, voters, cluster, count) for n, port in enumerate(ports, start=1)]


class EmbeddedKafka:
    """One KRaft node (broker + controller) in a child JVM, bound to loopback.

    ``port=0`` picks free ports. The data directory keeps the log dirs between runs; it is
    formatted on first use only.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        kafka_home: Path,
        heap: str = "512m",
        partitions: int = 4,
        node: ClusterNode | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.host = host
        self.port = port or free_port(host)
        self.kafka_home = kafka_home
        self.heap = heap
        self.partitions = partitions
        self.node_id = node.node_id if node else 1
        self.controller_port = node.controller_port if node else free_port(host)
        self._node = node
        self.log_path = self.data_dir / "broker.log"
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, timeout: float = 90.0) -> None:
        began = time.monotonic()
        self.launch()
        self.wait_ready(timeout)
        self.start_seconds = time.monotonic() - began
        log.info("event=kafka_ready bootstrap=%s seconds=%.2f", self.bootstrap, self.start_seconds)

    def launch(self) -> None:
        """Format the log dirs on first use and start the JVM; :meth:`wait_ready` waits for it.

        The nodes of a cluster are all launched before any is waited for: none is ready before
        a majority of the controllers runs.
        """
        libs = ensure_jars(self.kafka_home)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self._write_properties()
        logs = self.data_dir / "logs"
        if not (logs / "meta.properties").exists():
            cluster = self._node.cluster_id if self._node else cluster_id()
            self._java(libs, _STORAGE_TOOL, *format_args(cluster, props))
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                self._java_cmd(libs, _MAIN_CLASS, str(props)),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 90.0) -> None:
        try:
            asyncio.run(self._wait_ready(timeout))
        except BaseException:
            self.stop()
            raise

    def stop(self, *, timeout: float = 30.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("event=kafka_kill reason=no_exit_after_sigterm")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def kill(self) -> None:
        """A crash: SIGKILL to the broker's process group, no controlled shutdown."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def wait(self) -> int:
        """Block until the broker exits; return its exit code."""
        assert self._proc is not None
        return self._proc.wait()

    def log_tail(self, max_bytes: int = 6000) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[-max_bytes:].decode("utf-8", "replace")

    def __enter__(self) -> EmbeddedKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------

    def _write_properties(self) -> Path:
        path = self.data_dir / "server.properties"
        h = self.host
        node = self._node
        voters = node.voters if node else f"1@{h}:{self.controller_port}"
        replicas = node.replicas if node else 1
        min_isr = min(2, replicas)
        path.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={self.node_id}",
                    f"controller.quorum.voters={voters}",
                    f"listeners=PLAINTEXT://{h}:{self.port},CONTROLLER://{h}:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{h}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={self.data_dir / 'logs'}",
                    f"num.partitions={self.partitions}",
                    "auto.create.topics.enable=false",
                    f"offsets.topic.replication.factor={replicas}",
                    "offsets.topic.num.partitions=4",
                    f"transaction.state.log.replication.factor={replicas}",
                    f"transaction.state.log.min.isr={min_isr}",
                    f"share.coordinator.state.topic.replication.factor={replicas}",
                    f"share.coordinator.state.topic.min.isr={min_isr}",
                    f"default.replication.factor={replicas}",
                    f"min.insync.replicas={min_isr}",
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.hours=168",
                    "",
                ]
            )
        )
        return path

    def _java_cmd(self, libs: Path, main: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("Java 17+ is needed to run the embedded Kafka broker")
        return [
            java,
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1" if main == _STORAGE_TOOL else "-XX:+TieredCompilation",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={defaults.path('kafka/log4j2.properties')}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _java(self, libs: Path, main: str, *args: str) -> None:
        proc = subprocess.run(
            self._java_cmd(libs, main, *args),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise BrokerError(
                f"{main} {args[0]} failed", log_tail=(proc.stdout + proc.stderr)[-4000:]
            )

    async def _wait_ready(self, give_up_after: float) -> None:
        """Ready means what clients need: a topic can be created and has a leader."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import KafkaError, TopicAlreadyExistsError

        deadline = time.monotonic() + give_up_after
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerError(
                    f"Kafka exited with code {self._proc.returncode} while starting",
                    log_tail=self.log_tail(),
                )
            if not _listening(self.host, self.port):
                await asyncio.sleep(0.2)
                continue
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            try:
                await asyncio.wait_for(admin.start(), 5)
                try:
                    await admin.create_topics([NewTopic(_READY_TOPIC, 1, 1)])
                except TopicAlreadyExistsError:
                    pass
                return
            except (KafkaError, OSError, TimeoutError) as exc:
                last = exc
            finally:
                await admin.close()
            await asyncio.sleep(0.2)
        raise BrokerError(
            f"Kafka did not become ready within {give_up_after:.0f}s ({last!r})",
            log_tail=self.log_tail(),
        )
