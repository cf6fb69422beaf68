"""The browser SDK file and the snippet that loads it, checked without a browser."""

from __future__ import annotations

import gzip
import re

import pytest

from tracker.collector.sdk import SDK_PATH, STATIC, accepts_gzip
from tracker.settings import REPO_ROOT

MAX_GZIPPED = 6 * 1024


def test_sdk_is_at_most_6_kb_gzipped() -> None:
    size = len(gzip.compress(SDK_PATH.read_bytes(), compresslevel=9))
    assert size <= MAX_GZIPPED, f"sdk.js is {size} bytes gzipped"


def test_docs_show_the_snippet_the_tests_run() -> None:
    assert (STATIC / "snippet.html").read_text() in (REPO_ROOT / "docs" / "snippet.md").read_text()


def test_snippet_queues_every_call_of_the_sdk() -> None:
    snippet = (STATIC / "snippet.html").read_text()
    stubbed = re.search(r'"([a-zA-Z ]+)"\.split', snippet)
    assert stubbed is not None
    sdk = SDK_PATH.read_text()
    for name in stubbed.group(1).split():
        assert re.search(rf"^    {name}: ", sdk, re.M), f"sdk.js has no {name}()"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("*", True),
        ("gzip;q=0", False),
        ("identity", False),
        ("", False),
        ("gzip;q=bad", False),
    ],
)
def test_accept_encoding(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected
