from __future__ import annotations

import gzip
import zlib

import pytest

from tracker.collector.ingest import Checks, decode_body, parse_batch, parse_json
from tracker.errors import ValidationError

LIMIT = 10_000


def test_plain_body_within_limit_passes_through() -> None:
    assert decode_body(b"{}", "", limit=LIMIT) == b"{}"


def test_plain_body_over_limit_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        decode_body(b"x" * (LIMIT + 1), "identity", limit=LIMIT)
    assert info.value.reason == "body_too_large"


def test_gzip_body_is_inflated() -> None:
    assert decode_body(gzip.compress(b'{"a": 1}'), "gzip", limit=LIMIT) == b'{"a": 1}'


def test_deflate_body_is_inflated() -> None:
    assert decode_body(zlib.compress(b"[1]"), "Deflate", limit=LIMIT) == b"[1]"


def test_gzip_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"0" * 50_000_000)  # ~50 KB that inflates to 50 MB
    assert len(bomb) < 100_000
    with pytest.raises(ValidationError) as info:
        decode_body(bomb, "gzip", limit=LIMIT)
    assert info.value.reason == "body_too_large"


@pytest.mark.parametrize("body", [b"not gzip", gzip.compress(b"{}" * 100)[:20]])
def test_corrupt_or_truncated_gzip_is_rejected(body: bytes) -> None:
    with pytest.raises(ValidationError) as info:
        decode_body(body, "gzip", limit=LIMIT)
    assert info.value.reason == "bad_encoding"


def test_unknown_encoding_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        decode_body(b"{}", "br", limit=LIMIT)
    assert info.value.reason == "unsupported_encoding"


@pytest.mark.parametrize(
    "body",
    [b"", b"\xff\xfe{}", b"{", b"[" * 5000 + b"]" * 5000, b'{"n": 1' + b"0" * 400 + b"}"],
    ids=["empty", "invalid-utf8", "truncated", "deep-nesting", "huge-number"],
)
def test_hostile_json_is_a_validation_error(body: bytes) -> None:
    with pytest.raises(ValidationError) as info:
        parse_json(body)
    assert info.value.reason in {"invalid_json", "empty_body"}


def _parse(payload: object, **kw: object) -> object:
    checks = Checks(source="web", received_at_ms=1000, max_message_bytes=2000)
    return parse_batch(payload, checks, **kw)  # type: ignore[arg-type]


def test_batch_keeps_valid_messages_and_names_each_rejected_one() -> None:
    parsed = _parse(
        {
            "batch": [
                {"type": "track", "messageId": "ok", "userId": "u", "event": "E"},
                "not an object",
                {"type": "track", "messageId": "bad", "event": "E"},
                {
                    "type": "page",
                    "messageId": "big",
                    "userId": "u",
                    "properties": {"x": "y" * 3000},
                },
            ]
        }
    )
    assert [r["message_id"] for r in parsed.records] == ["ok"]  # type: ignore[attr-defined]
    assert [(r.index, r.reason) for r in parsed.rejected] == [  # type: ignore[attr-defined]
        (1, "invalid_message"),
        (2, "invalid_message"),
        (3, "message_too_large"),
    ]


def test_batch_level_sent_at_and_context_apply_to_messages() -> None:
    parsed = _parse(
        {
            "sentAt": "1970-01-01T00:00:03Z",
            "context": {"channel": "mobile"},
            "batch": [
                {"type": "track", "messageId": "m", "userId": "u", "event": "E",
                 "timestamp": "1970-01-01T00:00:01Z"},
            ],
        }
    )  # fmt: skip
    (record,) = parsed.records  # type: ignore[attr-defined]
    assert record["event_time_ms"] == 1000 - 2000
    assert record["channel"] == "mobile"


def test_single_message_endpoint_takes_the_type_from_the_route() -> None:
    parsed = _parse({"messageId": "m", "userId": "u", "name": "Home"}, single_type="page")
    assert [(r["type"], r["event"]) for r in parsed.records] == [("page", "Home")]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [([], "invalid_body"), ({"batch": {}}, "invalid_body"), ({"batch": []}, "empty_batch")],
)
def test_bodies_of_the_wrong_shape(payload: object, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        _parse(payload)
    assert info.value.reason == reason
