"""The collector's OpenAPI 3.1 document, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

_ID = {"type": "string", "minLength": 1, "maxLength": 256}
_MESSAGE: dict[str, Any] = {
    "type": "object",
    "required": ["messageId"],
    "properties": {
        "type": {"enum": ["track", "page", "screen", "identify", "alias", "group"]},
        "messageId": {"type": "string", "minLength": 1, "maxLength": 128},
        "anonymousId": _ID,
        "userId": _ID,
        "previousId": _ID,
        "groupId": _ID,
        "event": {"type": "string", "minLength": 1, "maxLength": 256},
        "name": {"type": "string", "maxLength": 256},
        "channel": {"type": "string", "minLength": 1, "maxLength": 64},
        "properties": {"type": "object"},
        "traits": {"type": "object"},
        "context": {"type": "object"},
        "timestamp": {"type": "string", "format": "date-time"},
        "sentAt": {"type": "string", "format": "date-time"},
    },
}
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
            "description": "Accepted: every accepted message is acknowledged by Kafka.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
        },
        "400": err("The body is not JSON, not of the right shape, or has no valid message."),
        "401": err("Unknown or missing write key (when sources are configured)."),
        "403": err("The browser origin is not allowed for this source."),
        "413": err("The body, or its decompressed form, is too large."),
        "429": err("The source is over its rate limit; see Retry-After."),
        "503": err("Kafka did not acknowledge in time; nothing was accepted; see Retry-After."),
    }


def _op(summary: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": _responses(),
        }
    }


_BATCH = {
    "type": "object",
    "required": ["batch"],
    "properties": {
        "batch": {
            "type": "array",
            "minItems": 1,
            "items": {"$ref": "#/components/schemas/Message"},
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
            "Message": _MESSAGE,
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
        **{
            f"/v1/{kind}": _op(f"Send one {kind} message", {"$ref": "#/components/schemas/Message"})
            for kind in ("track", "page", "screen", "identify", "alias", "group")
        },
    },
}
