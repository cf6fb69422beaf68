"""What a touchpoint is, how an incoming Segment-style message is validated and normalised.

A validated message becomes a *record*: a flat dict with snake_case keys, times as epoch
milliseconds (UTC), that travels through Kafka and lands as one row in ClickHouse.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MessageType = Literal["track", "page", "screen", "identify", "alias", "group"]

# Channels a record can carry when the sender says nothing: what the message type implies.
_DEFAULT_CHANNEL = {"page": "web", "screen": "app"}

Id = Field(default=None, min_length=1, max_length=256)
_IDS = ("anonymousId", "userId", "previousId", "groupId")


class SegmentMessage(BaseModel):
    """One message of the Segment HTTP Tracking API, as senders put it on the wire."""

    model_config = ConfigDict(extra="ignore", strict=False, str_max_length=4096)

    type: MessageType
    messageId: str = Field(min_length=1, max_length=128)
    anonymousId: str | None = Id
    userId: str | None = Id
    previousId: str | None = Id
    groupId: str | None = Id
    event: str | None = Field(default=None, min_length=1, max_length=256)
    name: str | None = Field(default=None, max_length=256)
    channel: str | None = Field(default=None, min_length=1, max_length=64)
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    timestamp: datetime | None = None  # when it happened, by the device's clock
    originalTimestamp: datetime | None = None  # the same, as RudderStack's SDKs name it
    sentAt: datetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _ids_are_strings(cls, data: Any) -> Any:
        # Reject numbers and booleans where ids belong instead of silently stringifying them.
        if not isinstance(data, dict):
            return data
        for key in ("messageId", *_IDS, "event"):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{key} must be a string, got {type(value).__name__}")
        # An empty id is no id: RudderStack's browser SDK sends "userId": "" for visitors.
        if any(data.get(key) == "" for key in _IDS):
            data = {**data, **{key: None for key in _IDS if data.get(key) == ""}}
        return data

    @model_validator(mode="after")
    def _required_ids(self) -> SegmentMessage:
        if self.type == "alias":
            if not (self.previousId and self.userId):
                raise ValueError("alias needs both previousId and userId")
        elif not (self.userId or self.anonymousId):
            raise ValueError("userId or anonymousId is required")
        if self.type == "track" and not self.event:
            raise ValueError("track needs an event name")
        if self.type == "group" and not self.groupId:
            raise ValueError("group needs a groupId")
        return self


def _ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def event_time_ms(timestamp_ms: int | None, sent_at_ms: int | None, received_at_ms: int) -> int:
    """The client's time corrected for its clock skew: ``receivedAt - (sentAt - timestamp)``.

    Without ``sentAt`` the skew is unknown and the client timestamp is taken as it is; without a
    timestamp the receive time is the best there is.
    """
    if timestamp_ms is None:
        return received_at_ms
    if sent_at_ms is None:
        return timestamp_ms
    return received_at_ms - (sent_at_ms - timestamp_ms)


def _traits(msg: SegmentMessage) -> dict[str, Any]:
    """The message's traits; an identify's may come in ``context.traits`` (RudderStack's SDKs)."""
    if msg.traits or msg.type != "identify":
        return msg.traits
    given = msg.context.get("traits")
    return given if isinstance(given, dict) else {}


def to_record(msg: SegmentMessage, *, source: str, received_at_ms: int) -> dict[str, Any]:
    """Normalise a validated message into the record that goes to Kafka and ClickHouse."""
    device_time = msg.timestamp or msg.originalTimestamp
    timestamp = _ms(device_time) if device_time else None
    sent_at = _ms(msg.sentAt) if msg.sentAt else None
    channel = (
        msg.channel
        or _str_or_none(msg.properties.get("channel"))
        or _DEFAULT_CHANNEL.get(msg.type)
        or _str_or_none(msg.context.get("channel"))
        or "server"
    )
    return {
        "message_id": msg.messageId,
        "type": msg.type,
        "event": msg.event if msg.type == "track" else (msg.name or ""),
        "anonymous_id": msg.anonymousId or "",
        "user_id": msg.userId or "",
        "previous_id": msg.previousId or "",
        "group_id": msg.groupId or "",
        "channel": channel[:64],
        "source": source,
        "timestamp_ms": timestamp if timestamp is not None else received_at_ms,
        "sent_at_ms": sent_at or 0,
        "received_at_ms": received_at_ms,
        "event_time_ms": event_time_ms(timestamp, sent_at, received_at_ms),
        "properties": msg.properties,
        "traits": _traits(msg),
        "context": msg.context,
    }


def record_key(record: dict[str, Any]) -> str:
    """The partitioning key: the known customer id, else the anonymous visitor id."""
    return str(record["user_id"] or record["anonymous_id"])


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def describe_errors(exc: ValidationError) -> str:
    """One readable line naming every failing field: ``userId: Input should be a valid string``."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "message"
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)
