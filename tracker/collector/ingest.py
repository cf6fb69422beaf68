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


def parse_batch(
    payload: Any,
    *,
    source: str,
    received_at_ms: int,
    max_message_bytes: int,
    single_type: str | None = None,
) -> ParsedBatch:
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
        rejected = _check_message(index, message, max_message_bytes)
        if rejected is not None:
            parsed.rejected.append(rejected)
            continue
        merged = {**defaults, **message} if defaults else message
        try:
            validated = SegmentMessage.model_validate(merged)
        except PydanticValidationError as exc:
            parsed.rejected.append(
                Rejected(index, "invalid_message", describe_errors(exc), message)
            )
            continue
        parsed.records.append(to_record(validated, source=source, received_at_ms=received_at_ms))
    return parsed


def _check_message(index: int, message: Any, max_bytes: int) -> Rejected | None:
    if not isinstance(message, dict):
        return Rejected(index, "invalid_message", "a message must be a JSON object", message)
    size = len(orjson.dumps(message))
    if size > max_bytes:
        return Rejected(index, "message_too_large", f"{size} bytes exceeds {max_bytes}", None)
    return None
