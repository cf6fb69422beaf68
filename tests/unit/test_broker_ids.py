"""KRaft cluster ids and the storage tool's format arguments."""

from __future__ import annotations

from pathlib import Path

from tracker.kafka.broker import cluster_id, format_args

# 0xf8 puts 62 in the first base64 digit: URL-safe base64 writes it as "-".
DASH_FIRST = bytes([0xF8]) + bytes(15)


def test_an_id_that_would_begin_with_a_dash_is_drawn_again() -> None:
    draws = iter([DASH_FIRST, DASH_FIRST, bytes(16)])
    assert cluster_id(lambda: next(draws)) == "AAAAAAAAAAAAAAAAAAAAAA"


def test_ids_are_22_url_safe_characters() -> None:
    ids = {cluster_id() for _ in range(500)}
    assert len(ids) == 500
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert all(
        set(i) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        for i in ids
    )


def test_format_passes_the_id_as_one_token_even_with_a_leading_dash() -> None:
    args = format_args("-AbCdEfGhIjKlMnOpQrStU", Path("/k/server.properties"))
    assert args == ["format", "--cluster-id=-AbCdEfGhIjKlMnOpQrStU", "-c", "/k/server.properties"]
