"""The client IP in ``context.ip``, at the HTTP level: what the running collector writes to Kafka,
with and without anonymising, with and without a trusted proxy in front."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.integration.processes import Process, post
from tests.integration.topics import read_topic
from tracker.kafka.broker import EmbeddedKafka
from tracker.settings import Settings

pytestmark = pytest.mark.integration


def send_and_read(
    settings: Settings, kafka: EmbeddedKafka, tmp_path: Path, sends: list[tuple[str, dict]]
) -> dict[str, dict]:
    """POST one message per ``(message id, extra headers)``; the context of each, from Kafka."""
    collector = Process("collector", settings, kafka.bootstrap, tmp_path).wait_ready()
    try:
        for message_id, headers in sends:
            message = {"type": "track", "messageId": message_id, "userId": "u", "event": "E"}
            if message_id.startswith("own"):
                message["context"] = {"ip": "2001:db8:aa:bb::1"}
            status, body = post(f"{collector.url}/v1/track", orjson.dumps(message), headers)
            assert (status, body) == (200, {"success": True})
    finally:
        collector.stop()
    contexts = {}
    for _, value in read_topic(kafka.bootstrap, settings.topic_touchpoints, at_least=len(sends)):
        for record in orjson.loads(value):
            contexts[record["message_id"]] = record["context"]
    return contexts


def test_by_default_the_peer_ip_is_cut_and_forwarded_for_is_ignored(
    settings: Settings, kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    assert settings.anonymize_ip and settings.trusted_proxy_hops == 0
    contexts = send_and_read(settings, kafka, tmp_path, [
        ("plain", {}),
        ("spoofed", {"X-Forwarded-For": "198.51.100.7"}),
        ("own", {}),
    ])  # fmt: skip
    assert contexts == {
        "plain": {"ip": "127.0.0.0"},
        "spoofed": {"ip": "127.0.0.0"},  # no proxy is trusted: the header proves nothing
        "own": {"ip": "2001:db8:aa::"},  # the sender's own address is cut as well
    }


def test_behind_a_trusted_proxy_its_view_of_the_client_is_used(
    settings: Settings, kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    proxied = settings.model_copy(update={"trusted_proxy_hops": 1})
    contexts = send_and_read(proxied, kafka, tmp_path, [
        ("v4", {"X-Forwarded-For": "10.9.9.9, 203.0.113.77"}),  # the client wrote the first
        ("v6", {"X-Forwarded-For": "2001:db8:1:2::5"}),
        ("direct", {}),
    ])  # fmt: skip
    assert contexts == {
        "v4": {"ip": "203.0.113.0"},
        "v6": {"ip": "2001:db8:1::"},
        "direct": {"ip": "127.0.0.0"},
    }


def test_with_anonymising_off_addresses_are_kept_whole(
    settings: Settings, kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    whole = settings.model_copy(update={"anonymize_ip": False, "trusted_proxy_hops": 2})
    contexts = send_and_read(whole, kafka, tmp_path, [
        ("two-hops", {"X-Forwarded-For": "192.0.2.1, 203.0.113.77, 10.0.0.2"}),
        ("own", {"X-Forwarded-For": "203.0.113.77, 10.0.0.2"}),
    ])  # fmt: skip
    assert contexts == {"two-hops": {"ip": "203.0.113.77"}, "own": {"ip": "2001:db8:aa:bb::1"}}
