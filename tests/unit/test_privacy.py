from __future__ import annotations

import pytest

from tracker.collector.ingest import Checks, parse_batch
from tracker.core.privacy import anonymize_ip


@pytest.mark.parametrize(
    ("ip", "cut"),
    [("203.0.113.77", "203.0.113.0"), ("10.0.0.255", "10.0.0.0"),
     ("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::"), ("2001:db8::1", "2001:db8::"),
     ("::ffff:198.51.100.9", "198.51.100.0"), ("fe80::1%eth0", "fe80::"),
     (" 192.0.2.1 ", "192.0.2.0"), ("not an ip", None), ("", None), ("300.1.1.1", None)],
)  # fmt: skip
def test_addresses_are_cut_to_their_network(ip: str, cut: str | None) -> None:
    assert anonymize_ip(ip) == cut


def _context(message: dict[str, object], **checks: object) -> object:
    base = {"type": "track", "messageId": "m", "userId": "u", "event": "E"}
    full = Checks(source="web", received_at_ms=1, max_message_bytes=4000, **checks)  # type: ignore[arg-type]
    return parse_batch({"batch": [{**base, **message}]}, full).records[0]["context"]


def test_the_client_ip_is_recorded_when_the_message_has_none() -> None:
    assert _context({}, client_ip="198.51.100.23") == {"ip": "198.51.100.23"}
    assert _context({}, client_ip="198.51.100.23", anonymize_ip=True) == {"ip": "198.51.100.0"}
    assert _context({}) == {}


def test_an_ip_the_sender_gives_is_kept_or_cut_and_never_kept_whole_when_cutting() -> None:
    mine = {"context": {"ip": "2001:db8:5:6::9", "locale": "en-GB"}}
    assert _context(mine, client_ip="192.0.2.1") == {"ip": "2001:db8:5:6::9", "locale": "en-GB"}
    assert _context(mine, client_ip="192.0.2.1", anonymize_ip=True) == {
        "ip": "2001:db8:5::", "locale": "en-GB"}  # fmt: skip
    assert _context({"context": {"ip": "garbage"}}, anonymize_ip=True) == {}
