"""``tracker import`` against the real broker and worker: same records as the collector writes,
rejected rows named by line, and a second import of the same file counted once."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from tests.integration.processes import Process, metric, query, settings_env, wait_until
from tests.integration.topics import read_records
from tracker.kafka.broker import EmbeddedKafka
from tracker.settings import Settings

pytestmark = pytest.mark.integration

CSV = (
    "type,event,userId,anonymousId,timestamp,channel,properties.total,properties.zip,"
    "properties.paid,traits.name\n"
    ",Purchase,cust-1,,2026-03-01T10:00:00Z,store,12.50,00123,true,Ann\n"
    'track,Purchase,cust-2,,2026-03-01T11:00:00Z,,3,,false,"Bo, Jr"\n'
    ",Complaint,,anon-9,2026-03-02T09:30:00+01:00,call_center,,,,\n"
)


def run_import(
    settings: Settings, kafka: EmbeddedKafka, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracker.cli", "import", *args],
        env=settings_env(settings, kafka.bootstrap), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def records(settings: Settings, kafka: EmbeddedKafka, at_least: int) -> dict[str, dict]:
    out = {}
    parts = list(range(settings.topic_partitions))
    topic = settings.topic_touchpoints
    for partition, record in read_records(kafka.bootstrap, topic, at_least=at_least):
        # On the partition of its customer key, as the collector writes it.
        key = (record["user_id"] or record["anonymous_id"]).encode()
        assert partition == DefaultPartitioner()(key, parts, parts)
        out.setdefault(record["message_id"], record)
    return out


def test_csv_rows_become_the_collectors_records(
    settings: Settings, kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    path = tmp_path / "tills.csv"
    path.write_text(CSV)
    done = run_import(settings, kafka, str(path), "--source", "tills")
    assert done.returncode == 0, done.stderr
    assert "3 rows read, 3 accepted (acknowledged by Kafka), 0 rejected" in done.stdout
    assert "import: 3 rows read, 3 accepted, 0 rejected" in done.stderr

    by_event = {(r["event"], r["user_id"] or r["anonymous_id"]): r
                for r in records(settings, kafka, 3).values()}  # fmt: skip
    purchase = by_event[("Purchase", "cust-1")]
    assert purchase["message_id"].startswith("imp-")
    assert (purchase["type"], purchase["source"], purchase["channel"]) == (
        "track",
        "tills",
        "store",
    )
    assert purchase["properties"] == {"total": 12.5, "zip": "00123", "paid": True}
    assert purchase["traits"] == {"name": "Ann"}
    assert purchase["timestamp_ms"] == purchase["event_time_ms"] == 1772359200000
    second = by_event[("Purchase", "cust-2")]
    assert second["channel"] == "offline"  # the row names none: the import's default
    assert second["properties"] == {"total": 3, "paid": False}
    assert second["traits"] == {"name": "Bo, Jr"}
    call = by_event[("Complaint", "anon-9")]
    assert (call["channel"], call["timestamp_ms"]) == ("call_center", 1772440200000)


def test_bad_rows_are_named_by_line_and_the_good_ones_written(
    settings: Settings, kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    good = {"type": "track", "event": "Parcel Scanned", "userId": "cust-5",
            "timestamp": "2026-03-03T08:00:00Z", "messageId": "scan-1"}  # fmt: skip
    lines = [
        orjson.dumps(good),  # 1
        b'{"type": "track", "event": "E", "userId": "u"',  # 2: cut off
        b'{"type": "track", "event": "caf\xe9", "userId": "u", "timestamp": "2026-03-03"}',  # 3
        orjson.dumps({**good, "messageId": "big", "properties": {"x": "y" * 40_000}}),  # 4
        b"",  # 5: blank, skipped
        orjson.dumps({"type": "track", "event": "E", "userId": "u"}),  # 6: no timestamp
        orjson.dumps({**good, "userId": 42}),  # 7
        b"[1, 2]",  # 8
        orjson.dumps({**good, "messageId": "scan-2", "channel": "courier"}),  # 9
    ]
    path = tmp_path / "scans.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    rejects = tmp_path / "rejects.ndjson"
    done = run_import(settings, kafka, str(path), "--source", "couriers", "--rejects", str(rejects))
    assert done.returncode == 3, done.stderr
    assert "8 rows read, 2 accepted (acknowledged by Kafka), 6 rejected" in done.stdout
    found = [orjson.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in found] == [
        (2, "invalid_json"),
        (3, "not_utf8"),
        (4, "message_too_large"),
        (6, "missing_timestamp"),
        (7, "invalid_message"),
        (8, "invalid_message"),
    ]
    assert "userId must be a string" in found[4]["detail"]
    for line, reason in [(2, "invalid_json"), (4, "message_too_large"), (7, "invalid_message")]:
        assert f"line {line}: {reason}: " in done.stdout

    written = records(settings, kafka, 2)
    assert sorted(written) == ["scan-1", "scan-2"]
    assert written["scan-2"]["channel"] == "courier"
    assert written["scan-1"]["channel"] == "offline"


def test_importing_the_same_file_twice_counts_each_row_once(
    settings: Settings, kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    rows = ["type,event,userId,timestamp,properties.amount"]
    rows += [f"track,Purchase,cust-{i % 7},2026-03-0{1 + i % 5}T10:{i % 60:02d}:00Z,{i}"
             for i in range(50)]  # fmt: skip
    path = tmp_path / "receipts.csv"
    path.write_text("\n".join(rows) + "\n")
    worker = Process("worker", settings, kafka.bootstrap, tmp_path).wait_ready()
    try:
        for _ in range(2):
            done = run_import(settings, kafka, str(path), "--source", "tills")
            assert done.returncode == 0, done.stderr
            assert "50 accepted" in done.stdout

        def all_written() -> bool:
            """Both imports consumed and every touchpoints offset committed: the worker commits
            only after the rows are in ClickHouse. (Copies of a messageId that meet in one batch
            are written once, so the rows written are not a count to wait for.)"""
            import urllib.request

            with urllib.request.urlopen(f"{worker.url}/metrics", timeout=10) as resp:
                text = resp.read().decode()
            lags = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("tracker_consumer_lag_messages{")
                    and f'topic="{settings.topic_touchpoints}"' in line]  # fmt: skip
            consumed = metric(worker, "tracker_worker_events_total")
            return consumed >= 100 and bool(lags) and sum(lags) == 0

        wait_until(all_written, timeout=60, what="both imports consumed and written")
        counts = query(
            worker.url,
            "SELECT count() AS n, uniqExact(message_id) AS ids, sum(JSONExtractInt(properties, "
            "'amount')) AS total FROM tracker.touchpoints WHERE source = 'tills'",
        )
        assert counts == [{"n": 50, "ids": 50, "total": sum(range(50))}]
    finally:
        worker.stop()


def test_an_unreachable_kafka_is_a_clear_error(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "tills.csv"
    path.write_text(CSV)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "import", str(path), "--source", "tills"],
        env=settings_env(settings, f"127.0.0.1:{port}"), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert f"tracker: Kafka at 127.0.0.1:{port} is not reachable" in done.stderr
    assert "Traceback" not in done.stderr
