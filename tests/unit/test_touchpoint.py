from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tracker.core.touchpoint import (
    SegmentMessage,
    describe_errors,
    event_time_ms,
    record_key,
    to_record,
)


def test_event_time_corrects_client_clock_skew() -> None:
    # The client's clock is 60 s fast: it stamped the event at 100 s and sent it at 110 s
    # (its clock); the server received it at 50 s (true time). True event time: 40 s.
    assert event_time_ms(100_000, 110_000, 50_000) == 40_000


def test_event_time_without_sent_at_or_timestamp() -> None:
    assert event_time_ms(100_000, None, 50_000) == 100_000
    assert event_time_ms(None, 110_000, 50_000) == 50_000


@given(ts=st.integers(0, 2**41), delay=st.integers(0, 10**7), received=st.integers(0, 2**41))
def test_event_time_is_received_time_minus_client_side_delay(
    ts: int, delay: int, received: int
) -> None:
    assert received - event_time_ms(ts, ts + delay, received) == delay


def test_record_normalises_a_segment_track_message() -> None:
    msg = SegmentMessage.model_validate(
        {
            "type": "track",
            "messageId": "m1",
            "anonymousId": "a1",
            "userId": "u1",
            "event": "Cart Viewed",
            "properties": {"total": 10},
            "context": {"channel": "mobile"},
            "timestamp": "2026-01-01T00:00:00Z",
            "sentAt": "2026-01-01T00:00:02Z",
            "integrations": {"All": True},
        }
    )
    record = to_record(msg, source="web", received_at_ms=1_767_225_601_000)
    assert record == {
        "message_id": "m1",
        "type": "track",
        "event": "Cart Viewed",
        "anonymous_id": "a1",
        "user_id": "u1",
        "previous_id": "",
        "group_id": "",
        "channel": "mobile",
        "source": "web",
        "timestamp_ms": 1_767_225_600_000,
        "sent_at_ms": 1_767_225_602_000,
        "received_at_ms": 1_767_225_601_000,
        "event_time_ms": 1_767_225_599_000,
        "properties": {"total": 10},
        "traits": {},
        "context": {"channel": "mobile"},
    }
    assert record_key(record) == "u1"


def test_channel_defaults_follow_the_message_type() -> None:
    def channel(**fields: object) -> str:
        msg = SegmentMessage.model_validate({"messageId": "m", "anonymousId": "a", **fields})
        return str(to_record(msg, source="s", received_at_ms=0)["channel"])

    assert channel(type="page") == "web"
    assert channel(type="screen") == "app"
    assert channel(type="track", event="E") == "server"
    assert channel(type="track", event="E", properties={"channel": "call_center"}) == "call_center"
    assert channel(type="page", channel="store") == "store"


def test_anonymous_key_when_no_user_id() -> None:
    msg = SegmentMessage.model_validate({"type": "page", "messageId": "m", "anonymousId": "a9"})
    assert record_key(to_record(msg, source="s", received_at_ms=0)) == "a9"


def test_naive_timestamps_are_taken_as_utc() -> None:
    msg = SegmentMessage.model_validate(
        {"type": "page", "messageId": "m", "anonymousId": "a", "timestamp": "2026-01-01T00:00:00"}
    )
    expected = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
    assert to_record(msg, source="s", received_at_ms=0)["timestamp_ms"] == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"type": "track", "messageId": "m", "event": "E"}, "userId or anonymousId is required"),
        ({"type": "track", "messageId": "m", "userId": "u"}, "track needs an event name"),
        ({"type": "alias", "messageId": "m", "userId": "u"}, "alias needs both previousId"),
        ({"type": "group", "messageId": "m", "userId": "u"}, "group needs a groupId"),
        ({"type": "page", "messageId": "m", "userId": ["u"]}, "userId must be a string"),
        ({"type": "page", "messageId": "", "userId": "u"}, "messageId: String should have"),
        ({"type": "page", "messageId": "m", "userId": "u", "properties": []}, "properties:"),
        ({"type": "nope", "messageId": "m", "userId": "u"}, "type: Input should be"),
    ],
)
def test_invalid_messages_are_named(fields: dict[str, object], expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        SegmentMessage.model_validate(fields)
    assert expected in describe_errors(info.value)


def _record(**fields: object) -> dict[str, object]:
    msg = SegmentMessage.model_validate({"messageId": "m", **fields})
    return to_record(msg, source="s", received_at_ms=50_000)


def test_empty_ids_are_absent() -> None:
    # RudderStack's browser SDK sends "userId": "" for a visitor who has not logged in.
    record = _record(type="page", userId="", anonymousId="a1", previousId="", groupId="")
    assert (record["user_id"], record["anonymous_id"], record["previous_id"]) == ("", "a1", "")
    with pytest.raises(ValidationError, match="userId or anonymousId is required"):
        SegmentMessage.model_validate(
            {"type": "page", "messageId": "m", "userId": "", "anonymousId": ""}
        )
    with pytest.raises(ValidationError, match="group needs a groupId"):
        SegmentMessage.model_validate(
            {"type": "group", "messageId": "m", "userId": "u", "groupId": ""}
        )


def test_original_timestamp_is_the_device_time_when_there_is_no_timestamp() -> None:
    # The device stamped it at 10 s and sent it at 12 s by its clock; received at 50 s.
    rudder = _record(
        type="track",
        event="E",
        anonymousId="a",
        originalTimestamp="1970-01-01T00:00:10Z",
        sentAt="1970-01-01T00:00:12Z",
    )
    assert (rudder["timestamp_ms"], rudder["event_time_ms"]) == (10_000, 48_000)
    # Both given: timestamp is the device time the sender means.
    both = _record(
        type="track",
        event="E",
        anonymousId="a",
        timestamp="1970-01-01T00:00:11Z",
        originalTimestamp="1970-01-01T00:00:10Z",
        sentAt="1970-01-01T00:00:12Z",
    )
    assert (both["timestamp_ms"], both["event_time_ms"]) == (11_000, 49_000)


def test_identify_traits_come_from_traits_or_context_traits() -> None:
    rudder = _record(type="identify", userId="u", context={"traits": {"plan": "gold"}})
    assert rudder["traits"] == {"plan": "gold"}
    segment = _record(
        type="identify", userId="u", traits={"plan": "silver"}, context={"traits": {"x": 1}}
    )
    assert segment["traits"] == {"plan": "silver"}
    # Other types keep their own traits: a track's context.traits describe the user, not it.
    track = _record(type="track", event="E", userId="u", context={"traits": {"plan": "gold"}})
    assert track["traits"] == {}
    odd = _record(type="identify", userId="u", context={"traits": ["not", "an", "object"]})
    assert odd["traits"] == {}
