"""The walking skeleton end to end: HTTP -> real Kafka -> Faust worker -> chdb."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.integration.processes import Process, post, query, wait_until
from tracker.kafka.broker import EmbeddedKafka
from tracker.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def worker(settings: Settings, kafka: EmbeddedKafka, tmp_path: Path) -> Iterator[Process]:
    proc = Process("worker", settings, kafka.bootstrap, tmp_path).wait_ready()
    yield proc
    proc.stop()


@pytest.fixture
def collector(settings: Settings, kafka: EmbeddedKafka, tmp_path: Path) -> Iterator[Process]:
    proc = Process("collector", settings, kafka.bootstrap, tmp_path).wait_ready()
    yield proc
    proc.stop()


def test_batch_reaches_clickhouse_with_exact_fields(worker: Process, collector: Process) -> None:
    batch = {
        "sentAt": "2026-03-01T12:00:10.000Z",
        "batch": [
            {
                "type": "page",
                "messageId": "msg-page-1",
                "anonymousId": "anon-7",
                "name": "Product",
                "properties": {"path": "/p/42"},
                "timestamp": "2026-03-01T12:00:00.000Z",
            },
            {
                "type": "track",
                "messageId": "msg-track-1",
                "anonymousId": "anon-7",
                "userId": "cust-1",
                "event": "Order Completed",
                "channel": "store",
                "properties": {"total": 99.5},
                "timestamp": "2026-03-01T12:00:05.000Z",
            },
        ],
    }
    sent = time.time()
    status, body = post(f"{collector.url}/v1/batch", orjson.dumps(batch))
    assert (status, body) == (200, {"success": True})

    sql = (
        "SELECT message_id, type, event, anonymous_id, user_id, channel, properties, "
        "toUnixTimestamp64Milli(original_timestamp) AS ts, "
        "toUnixTimestamp64Milli(timestamp) - toUnixTimestamp64Milli(received_at) AS skew_ms "
        "FROM {t} ORDER BY message_id"
    ).format(t="tracker.touchpoints WHERE message_id LIKE 'msg-%'")
    rows = wait_until(lambda: len(query(worker.url, sql)) == 2 and query(worker.url, sql),
                      timeout=30, what="both rows in ClickHouse")  # fmt: skip
    print(f"batch queryable {time.time() - sent:.2f}s after the POST")
    assert rows == [
        {
            "message_id": "msg-page-1",
            "type": "page",
            "event": "Product",
            "anonymous_id": "anon-7",
            "user_id": "",
            "channel": "web",
            "properties": '{"path":"/p/42"}',
            "ts": 1772366400000,
            "skew_ms": -10_000,  # sentAt - timestamp = 10 s before it was received
        },
        {
            "message_id": "msg-track-1",
            "type": "track",
            "event": "Order Completed",
            "anonymous_id": "anon-7",
            "user_id": "cust-1",
            "channel": "store",
            "properties": '{"total":99.5}',
            "ts": 1772366405000,
            "skew_ms": -5_000,
        },
    ]


def _batch(n: int, first: int) -> bytes:
    return orjson.dumps(
        {
            "batch": [
                {
                    "type": "track",
                    "messageId": f"m-{i:06d}",
                    "anonymousId": f"visitor-{i % 37}",
                    "event": "Product Viewed",
                    "properties": {"i": i},
                }
                for i in range(first, first + n)
            ]
        }
    )


def test_worker_crash_and_restart_loses_and_doubles_nothing(
    settings: Settings, kafka: EmbeddedKafka, collector: Process, tmp_path: Path
) -> None:
    worker = Process("worker", settings, kafka.bootstrap, tmp_path).wait_ready()
    total, per_batch = 3000, 20
    sent = 0

    def send(upto: int) -> None:
        nonlocal sent
        while sent < upto:
            status, body = post(f"{collector.url}/v1/batch", _batch(per_batch, sent))
            assert status == 200, body
            sent += per_batch

    count_sql = "SELECT count() AS n, uniqExact(message_id) AS u FROM tracker.touchpoints"
    send(total // 3)
    # Kill it while it is consuming: some of what it wrote is not committed yet.
    wait_until(lambda: query(worker.url, count_sql)[0]["n"] > 0, timeout=30, what="first rows")
    send(total // 2)
    worker.kill()
    send(total)  # the collector keeps accepting while no worker runs

    worker = Process("worker", settings, kafka.bootstrap, tmp_path).wait_ready()
    try:
        wait_until(
            lambda: query(worker.url, count_sql)[0]["n"] >= total,
            timeout=60,
            what=f"{total} rows after restart",
        )
        # Nothing lost: every id is there. Nothing doubled: each id counts once in analyst queries
        # (re-delivered rows collapse in ReplacingMergeTree; queries read with FINAL).
        ids = query(worker.url, "SELECT message_id FROM tracker.touchpoints ORDER BY message_id")
        assert [r["message_id"] for r in ids] == [f"m-{i:06d}" for i in range(total)]
        assert query(worker.url, count_sql) == [{"n": total, "u": total}]
    finally:
        worker.stop()


@pytest.mark.parametrize(
    ("body", "reason", "detail_part"),
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b"[1, 2]", "invalid_body", "JSON object"),
        (b'{"batch": "x"}', "invalid_body", "'batch' must be an array"),
        (b'{"batch": []}', "empty_batch", "no messages"),
        (
            b'{"batch": [{"type": "track", "messageId": "a", "event": "X"}]}',
            "invalid_message",
            "userId or anonymousId is required",
        ),
        (
            b'{"batch": [{"type": "track", "anonymousId": "v", "event": "X"}]}',
            "invalid_message",
            "messageId: Field required",
        ),
        (
            b'{"batch": [{"type": "track", "messageId": "a", "userId": 12, "event": "X"}]}',
            "invalid_message",
            "userId must be a string",
        ),
        (
            b'{"batch": [{"type": "track", "messageId": "a", "userId": "u", "event": "X", '
            b'"timestamp": "yesterday"}]}',
            "invalid_message",
            "timestamp",
        ),
        (
            b'{"batch": [{"type": "launch", "messageId": "a", "userId": "u"}]}',
            "invalid_message",
            "type",
        ),
    ],
)
def test_malformed_body_is_a_400_naming_the_problem(
    collector: Process, body: bytes, reason: str, detail_part: str
) -> None:
    status, answer = post(f"{collector.url}/v1/batch", body)
    assert status == 400
    assert answer["success"] is False
    assert answer["error"]["reason"] == reason
    assert detail_part in answer["error"]["detail"]


def test_rejected_input_writes_nothing_and_the_collector_keeps_serving(
    settings: Settings, kafka: EmbeddedKafka, collector: Process
) -> None:
    import asyncio

    from aiokafka import AIOKafkaConsumer

    for body in (b"\xff\xfe", b"{", b'{"batch": [{"type": "track"}]}'):
        status, _ = post(f"{collector.url}/v1/batch", body)
        assert status == 400
    good = {"batch": [{"type": "track", "messageId": "ok-1", "userId": "u", "event": "E"}]}
    assert post(f"{collector.url}/v1/batch", orjson.dumps(good)) == (200, {"success": True})

    async def touchpoint_messages() -> list[bytes]:
        consumer = AIOKafkaConsumer(
            settings.topic_touchpoints,
            bootstrap_servers=kafka.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=3000)
            return [m.value for msgs in batches.values() for m in msgs]
        finally:
            await consumer.stop()

    values = asyncio.run(asyncio.wait_for(touchpoint_messages(), 30))
    assert [[r["message_id"] for r in orjson.loads(v)] for v in values] == [["ok-1"]]
