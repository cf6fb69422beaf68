"""Reading exports of offline touchpoints (CSV or NDJSON) into Segment messages, row by row.

No Kafka here: a file goes in, ``(line, message)`` pairs come out, and every row that cannot be
read becomes a :class:`BadRow` with its line number and reason. Nothing in a file stops the reading
except a header that cannot be understood. Memory stays bounded: a line longer than the message
limit is skipped over in chunks, never held whole.

CSV columns (header row required, names are case-sensitive):

- ``type`` (default ``track``), ``event``, ``name``, ``userId``, ``anonymousId``, ``previousId``,
  ``groupId``, ``messageId``, ``channel``, ``timestamp``, ``sentAt``: the message fields, as text.
- ``properties.<key>``, ``traits.<key>``, ``context.<key>``: one key each; dots nest further
  (``properties.order.total``). Values are parsed: ``true``/``false`` become booleans, integers
  without leading zeros numbers, decimals like ``12.50`` floats; everything else stays text (so
  ``00123`` and ``+4420...`` keep their digits).
- An empty cell means the field is absent.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from tracker.errors import ValidationError

FIELDS = frozenset(
    {"type", "event", "name", "userId", "anonymousId", "previousId", "groupId", "messageId",
     "channel", "timestamp", "sentAt"}
)  # fmt: skip
NESTED = ("properties", "traits", "context")
_INT = re.compile(r"-?(0|[1-9][0-9]{0,17})")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]+([eE][-+]?[0-9]+)?")
_CHUNK = 1 << 16


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str
    detail: str
    raw: str = ""  # the row's text (shortened), for the rejects file


Row = tuple[int, dict[str, Any] | BadRow]


def read_lines(stream: BinaryIO, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, bytes)`` per physical line, ``None`` for a line longer than ``limit``."""
    number = 0
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of the line unread
                line = stream.readline(_CHUNK)
            yield number, None
            continue
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        yield number, line


def _shorten(text: str, size: int = 500) -> str:
    return text if len(text) <= size else text[:size] + "..."


def _too_long(number: int, limit: int) -> BadRow:
    return BadRow(number, "message_too_large", f"line is longer than {limit} bytes")


def read_ndjson(stream: BinaryIO, limit: int) -> Iterator[Row]:
    """One Segment message per line; blank lines are skipped."""
    for number, line in read_lines(stream, limit):
        if line is None:
            yield number, _too_long(number, limit)
            continue
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raw = _shorten(line.decode("utf-8", "replace").rstrip())
            yield number, BadRow(number, "not_utf8", f"byte {exc.start} is not UTF-8", raw)
            continue
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            yield number, BadRow(number, "invalid_json", str(exc), _shorten(text.rstrip()))
            continue
        if not isinstance(message, dict):
            detail = "a line must hold one JSON object"
            yield number, BadRow(number, "invalid_message", detail, _shorten(text.rstrip()))
            continue
        yield number, message


def read_csv(stream: BinaryIO, limit: int) -> Iterator[Row]:
    """One message per CSV record (quoted fields may span lines); see the module doc."""
    too_long: set[int] = set()

    def text_lines() -> Iterator[str]:
        for number, line in read_lines(stream, limit):
            if line is None:
                too_long.add(number)
                yield "\n"
            else:
                # Undecodable bytes survive as surrogates so their row can be rejected alone.
                yield line.decode("utf-8", "surrogateescape")

    csv.field_size_limit(limit)
    reader = csv.reader(text_lines(), strict=True)
    header: list[str] | None = None
    end = 0
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            end = reader.line_num
            if header is None:
                raise ValidationError(
                    "bad_header", f"the CSV header is unreadable: {exc}"
                ) from None
            yield start, BadRow(start, "bad_csv", str(exc))
            continue
        end = reader.line_num
        if any(n in too_long for n in range(start, end + 1)):
            too_long.difference_update(range(start, end + 1))
            yield start, _too_long(start, limit)
            continue
        if header is None:
            header = _check_header(row)
            continue
        if not any(cell.strip() for cell in row):
            continue
        yield start, _message(start, header, row)


def _check_header(row: list[str]) -> list[str]:
    columns = [c.strip() for c in row]
    if any(_has_surrogates(c) for c in columns):
        raise ValidationError("bad_header", "the CSV header is not UTF-8")
    unknown = [c for c in columns if c not in FIELDS and c.partition(".")[0] not in NESTED]
    unknown += [c for c in columns if c.partition(".")[0] in NESTED and not c.partition(".")[2]]
    if unknown:
        raise ValidationError(
            "bad_header",
            f"unknown CSV column(s) {', '.join(map(repr, unknown))}; expected "
            f"{', '.join(sorted(FIELDS))} or properties.*, traits.*, context.*",
        )
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise ValidationError("bad_header", f"CSV column {column!r} appears twice")
        seen.add(column)
    for column in columns:
        if any(other.startswith(column + ".") for other in columns):
            raise ValidationError("bad_header", f"CSV column {column!r} is also a nested key")
    return columns


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _message(number: int, header: list[str], row: list[str]) -> dict[str, Any] | BadRow:
    raw = _shorten(",".join(row).encode("utf-8", "replace").decode())
    if any(_has_surrogates(cell) for cell in row):
        return BadRow(number, "not_utf8", "the row holds bytes that are not UTF-8", raw)
    if len(row) != len(header):
        detail = f"the row has {len(row)} fields, the header {len(header)}"
        return BadRow(number, "bad_csv", detail, raw)
    message: dict[str, Any] = {"type": "track"}
    for column, cell in zip(header, row, strict=True):
        if cell == "":
            continue
        if column in FIELDS:
            message[column] = cell
            continue
        target = message
        *path, leaf = column.split(".")
        for key in path:
            target = target.setdefault(key, {})
        target[leaf] = scalar(cell)
    return message


def scalar(text: str) -> Any:
    """A CSV cell as the JSON value it most likely stands for (see the module doc)."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text
