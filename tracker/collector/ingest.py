"""From request bytes to records: decompression with a hard limit, JSON, shape, validation.

Pure functions: no I/O. Everything that is wrong with the input becomes a
:class:`~tracker.errors.ValidationError` (whole body) or a rejected entry (one message).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError as PydanticValidationError

from tracker.core.privacy import anonymize_ip
from tracker.core.touchpoint import SegmentMessage, describe_errors, to_record
from tracker.errors import ValidationError


@dataclass(frozen=True)
class Rejected:
    index: int
    reason: str
    detail: str
    message: Any = None

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason, "detail": self.detail}


@dataclass
class ParsedBatch:
    records: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def decode_body(body: bytes, content_encoding: str, *, limit: int) -> bytes:
    """Undo ``Content-Encoding`` without ever holding more than ``limit`` bytes of output."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise ValidationError("body_too_large", f"body exceeds {limit} bytes")
        return body
    if encoding not in ("gzip", "deflate"):
        raise ValidationError(
            "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported"
        )
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ValidationError("bad_encoding", f"body is not valid {encoding}: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ValidationError("body_too_large", f"decompressed body exceeds {limit} bytes")
    if not inflater.eof:
        raise ValidationError("bad_encoding", f"{encoding} body is truncated")
    return out


def parse_json(body: bytes) -> Any:
    if not body:
        raise ValidationError("empty_body", "the request body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValidationError("invalid_json", f"body is not valid JSON: {exc}") from None


@dataclass(frozen=True)
class Checks:
    """How every message is validated and completed, wherever it comes from."""

    source: str
    received_at_ms: int
    max_message_bytes: int
    client_ip: str | None = None  # recorded as context.ip when the message carries none
    anonymize_ip: bool = False  # cut context.ip down to its network before it is stored


def parse_batch(payload: Any, checks: Checks, *, single_type: str | None = None) -> ParsedBatch:
    """Validate a ``/v1/batch`` body (or one message for ``/v1/<type>`` when ``single_type``)."""
    if not isinstance(payload, dict):
        raise ValidationError("invalid_body", "body must be a JSON object")
    if single_type is not None:
        messages: list[Any] = [{**payload, "type": single_type}]
        defaults: dict[str, Any] = {}
    else:
        raw = payload.get("batch")
        if not isinstance(raw, list):
            raise ValidationError("invalid_body", "'batch' must be an array of messages")
        if not raw:
            raise ValidationError("empty_batch", "'batch' has no messages")
        messages = raw
        defaults = {k: payload[k] for k in ("sentAt", "context") if k in payload}

    parsed = ParsedBatch()
    for index, message in enumerate(messages):
        result = validate_message(index, message, checks, defaults=defaults)
        if isinstance(result, Rejected):
            parsed.rejected.append(result)
        else:
            parsed.records.append(result)
    return parsed


def validate_message(
    index: int, message: Any, checks: Checks, *, defaults: dict[str, Any] | None = None
) -> dict[str, Any] | Rejected:
    """One message to its record, or the reason it is rejected; ``defaults`` fill absent keys."""
    rejected = _check_message(index, message, checks.max_message_bytes)
    if rejected is not None:
        return rejected
    merged = {**defaults, **message} if defaults else message
    try:
        validated = SegmentMessage.model_validate(merged)
    except PydanticValidationError as exc:
        return Rejected(index, "invalid_message", describe_errors(exc), message)
    validated.context = _with_ip(validated.context, checks)
    return to_record(validated, source=checks.source, received_at_ms=checks.received_at_ms)


def _with_ip(context: dict[str, Any], checks: Checks) -> dict[str, Any]:
    given = context.get("ip")
    ip = given if isinstance(given, str) and given else checks.client_ip
    if checks.anonymize_ip and ip:
        ip = anonymize_ip(ip)
    if ip == given:
        return context
    out = dict(context)
    if ip:
        out["ip"] = ip
    else:
        out.pop("ip", None)
    return out


def _check_message(index: int, message: Any, max_bytes: int) -> Rejected | None:
    if not isinstance(message, dict):
        return Rejected(index, "invalid_message", "a message must be a JSON object", message)
    size = len(orjson.dumps(message))
    if size > max_bytes:
        return Rejected(index, "message_too_large", f"{size} bytes exceeds {max_bytes}", None)
    return None
