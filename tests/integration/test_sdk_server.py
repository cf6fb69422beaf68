"""The server-side SDKs people already run, unchanged and pinned, sending to the real collector:
segment-analytics-python and rudder-sdk-python in this process, @segment/analytics-node and
@rudderstack/rudder-sdk-node as Node processes. Every call must land in ``tracker.touchpoints``
exactly once with its fields and a corrected event time."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from tests.integration.sdk_stack import (
    NODE_MODULES,
    SDK_DIR,
    Stack,
    assert_stored_once,
    calls,
    running_stack,
)
from tracker.kafka.broker import EmbeddedKafka

pytestmark = pytest.mark.integration

WRITE_KEY = "wk_server_sdks_01"
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def stack(kafka: EmbeddedKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    sources = f"sources:\n  - {{name: servers, write_key: {WRITE_KEY}, rate_limit: 1000}}\n"
    workdir = tmp_path_factory.mktemp("server-sdks")
    with running_stack(kafka, workdir, uuid.uuid4().hex[:10], sources) as running:
        yield running


def _python_call(client: Any, call: dict[str, Any], timestamp: datetime) -> None:
    """One call through a Python SDK's own method, with its keyword names."""
    fields = dict(call)
    kind = fields.pop("type")
    names = {"userId": "user_id", "anonymousId": "anonymous_id", "previousId": "previous_id",
             "groupId": "group_id"}  # fmt: skip
    kwargs = {names.get(k, k): v for k, v in fields.items()}
    if kind == "alias":
        kwargs.pop("anonymous_id", None)
    client_method = getattr(client, kind)
    succeeded, _ = client_method(timestamp=timestamp, **kwargs)
    assert succeeded, f"{kind} was not queued"


PYTHON_SDKS = {"segment": SegmentClient, "rudderstack": RudderClient}


@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "batched"])
@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("sdk", sorted(PYTHON_SDKS))
def test_python_sdk(stack: Stack, sdk: str, gzip: bool, batched: bool) -> None:
    run = uuid.uuid4().hex[:12]
    errors: list[str] = []
    client = PYTHON_SDKS[sdk](
        write_key=WRITE_KEY, host=stack.collector.url, gzip=gzip, sync_mode=not batched,
        upload_size=100, upload_interval=0.2, max_retries=2,
        on_error=lambda exc, batch: errors.append(repr(exc)),
    )  # fmt: skip
    # Events that happened an hour ago (a backfill): the stored time is the event's, corrected
    # by the difference between the sender's clock at sending and the collector's at receipt.
    happened = datetime.now(UTC) - timedelta(hours=1)
    sent = calls(run)
    for call in sent:
        _python_call(client, call, happened)
    if batched:
        client.shutdown()  # flush the queue, stop the sending thread
    assert errors == []
    stack.settled()
    rows = stack.touchpoints(run)
    at = int(happened.timestamp() * 1000)
    assert_stored_once(rows, sent, source="servers", time_window=(at, at + 5_000))
    assert {r["device_ms"] for r in rows} == {at}


def _node() -> str:
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "@segment" / "analytics-node").is_dir():
        pytest.fail("node and tests/sdk/node_modules are needed: run scripts/setup --test")
    return node


NODE_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    # @segment/analytics-node has no gzip option.
    "segment": {
        "one-by-one": {"flushAt": 1},
        "batched": {"flushAt": 20, "flushInterval": 200},
    },
    "rudderstack": {
        "one-by-one": {"flushAt": 1, "gzip": False},
        "batched": {"flushAt": 20, "flushInterval": 200, "gzip": False},
        "batched-gzip": {"flushAt": 20, "flushInterval": 200, "gzip": True},
    },
}


@pytest.mark.parametrize(
    ("sdk", "mode"), [(sdk, mode) for sdk, modes in NODE_OPTIONS.items() for mode in modes]
)
def test_node_sdk(stack: Stack, sdk: str, mode: str) -> None:
    run = uuid.uuid4().hex[:12]
    sent = calls(run)
    plan = {"sdk": sdk, "url": stack.collector.url, "writeKey": WRITE_KEY,
            "options": NODE_OPTIONS[sdk][mode], "calls": sent}  # fmt: skip
    # The sending machine's clock is an hour fast; the stored time must be the true one.
    before = int(time.time() * 1000)
    done = subprocess.run(
        [_node(), "--import", "./skewed-clock.mjs", "send.mjs", orjson.dumps(plan).decode()],
        cwd=SDK_DIR, env={"PATH": "/usr/bin:/bin", "SKEW_MS": str(HOUR_MS)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    after = int(time.time() * 1000)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == {"sent": len(sent)}
    stack.settled()
    rows = stack.touchpoints(run)
    assert_stored_once(rows, sent, source="servers", time_window=(before, after))
    for row in rows:  # the device's own stamp, an hour ahead, is kept beside it
        assert HOUR_MS - 1_000 <= row["device_ms"] - row["time_ms"] <= HOUR_MS + 1_000


def test_setup_installs_the_pinned_node_sdks() -> None:
    """The versions in tests/sdk/package.json are the ones installed and locked."""
    wanted = orjson.loads((SDK_DIR / "package.json").read_bytes())["dependencies"]
    locked = orjson.loads((SDK_DIR / "package-lock.json").read_bytes())["packages"]
    for name, version in wanted.items():
        assert locked[f"node_modules/{name}"]["version"] == version
        installed = orjson.loads((NODE_MODULES / name / "package.json").read_bytes())
        assert installed["version"] == version
