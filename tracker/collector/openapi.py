"""The collector's OpenAPI 3.1 document, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

KINDS = ("track", "page", "screen", "identify", "alias", "group")
# An empty id is taken as absent, as RudderStack's browser SDK sends it.
_ID = {"type": ["string", "null"], "maxLength": 256}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_FIELDS: dict[str, Any] = {
    "messageId": {"type": "string", "minLength": 1, "maxLength": 128},
    "anonymousId": _ID,
    "userId": _ID,
    "previousId": _ID,
    "groupId": _ID,
    "event": {"type": ["string", "null"], "minLength": 1, "maxLength": 256},
    "name": {"type": ["string", "null"], "maxLength": 256},
    "channel": {"type": ["string", "null"], "minLength": 1, "maxLength": 64},
    "properties": {"type": "object"},
    "traits": {"type": "object"},
    "context": {"type": "object"},
    "timestamp": _TIME,
    "originalTimestamp": _TIME,  # the device time when there is no timestamp
    "sentAt": _TIME,
}


def _given(*names: str) -> dict[str, Any]:
    """These fields present, as non-empty strings."""
    given = {"type": "string", "minLength": 1}
    return {"required": list(names), "properties": {n: given for n in names}}


# What each type needs besides a messageId (the collector checks the same, message by message).
_NEEDS: dict[str, list[dict[str, Any]]] = {
    kind: [{"anyOf": [_given("userId"), _given("anonymousId")]}] for kind in KINDS
}
_NEEDS["track"].append(_given("event"))
_NEEDS["group"].append(_given("groupId"))
_NEEDS["alias"] = [_given("previousId", "userId")]


def _message(kind: str, *, typed: bool) -> dict[str, Any]:
    """A ``kind`` message; ``typed``: inside a batch, where the message names its own type."""
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["type", "messageId"] if typed else ["messageId"],
        "properties": {**({"type": {"const": kind}} if typed else {}), **_FIELDS},
        "allOf": _NEEDS[kind],
    }
    return schema


_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {
        "success": {"const": False},
        "error": {
            "type": "object",
            "properties": {"reason": {"type": "string"}, "detail": {"type": "string"}},
        },
        "rejected": {"type": "array", "items": {"$ref": "#/components/schemas/Rejected"}},
    },
}


def _responses() -> dict[str, Any]:
    def err(text: str) -> dict[str, Any]:
        ref = {"$ref": "#/components/schemas/Error"}
        return {"description": text, "content": {"application/json": {"schema": ref}}}

    return {
        "200": {
            "description": "Accepted: every accepted message is acknowledged by Kafka. In a batch "
            "with invalid messages the valid ones are accepted and the invalid ones listed in "
            "'rejected'.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
        },
        "400": err("The body is not JSON, not of the right shape, or has no valid message."),
        "401": err("Unknown or missing write key (when sources are configured)."),
        "403": err("The browser origin is not allowed for this source."),
        "413": err("The body, or its decompressed form, is too large."),
        "429": err("The source is over its rate limit; see Retry-After."),
        "503": err("Kafka did not acknowledge in time; nothing was accepted; see Retry-After."),
    }


def _op(summary: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": _responses(),
            **extra,
        }
    }


_WRITE_KEY_QUERY = {
    "name": "writeKey",
    "in": "query",
    "required": False,
    "description": "The source's write key, for senders that cannot set headers (sendBeacon).",
    "schema": {"type": "string"},
}

_SDK_REPORT = {
    "post": {
        "summary": "An SDK's report about itself (analytics.js 2.0): answered and dropped",
        "requestBody": {"content": {"application/json": {"schema": {}}}},
        "responses": {
            "200": {
                "description": "Dropped; counted in tracker_collector_sdk_reports_dropped_total.",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}
                },
            },
            "413": {"description": "The body is too large."},
        },
    }
}


_BATCH = {
    "type": "object",
    "required": ["batch"],
    "properties": {
        "batch": {
            "type": "array",
            "minItems": 1,
            "items": {"oneOf": [{"$ref": f"#/components/schemas/{k.title()}"} for k in KINDS]},
        },
        "sentAt": {"type": "string", "format": "date-time"},
        "context": {"type": "object"},
        "writeKey": {"type": "string"},
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Touchpoint Tracker collector", "version": "1"},
    "components": {
        "securitySchemes": {"writeKey": {"type": "http", "scheme": "basic"}},
        "schemas": {
            **{k.title(): _message(k, typed=True) for k in KINDS},
            "Error": _ERROR,
            "Rejected": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "reason": {"type": "string"},
                    "detail": {"type": "string"},
                },
            },
            "Accepted": {
                "type": "object",
                "required": ["success"],
                "properties": {
                    "success": {"const": True},
                    "accepted": {"type": "integer"},
                    "rejected": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Rejected"},
                    },
                },
            },
        },
    },
    "security": [{"writeKey": []}, {}],
    "paths": {
        "/v1/batch": _op("Send a batch of messages", _BATCH),
        "/v1/b": _op("Send a batch of messages (analytics.js 2.0's path)", _BATCH),
        "/beacon/v1/batch": _op(
            "Send a batch of messages by sendBeacon (RudderStack's path)",
            _BATCH,
            parameters=[_WRITE_KEY_QUERY],
        ),
        **{
            f"/v1/{kind}": _op(f"Send one {kind} message", _message(kind, typed=False))
            for kind in KINDS
        },
        **{
            f"/v1/{kind[0]}": _op(
                f"Send one {kind} message (analytics.js 2.0's path)", _message(kind, typed=False)
            )
            for kind in KINDS
        },
        "/v1/m": _SDK_REPORT,
    },
}
