from __future__ import annotations

from pathlib import Path

import pytest

from tracker.collector.sources import Sources, TokenBucket
from tracker.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_grants_bursts_then_says_how_long_to_wait() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=20, clock=clock)
    assert bucket.take(20) == 0
    assert bucket.take(5) == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take(5) == 0
    assert bucket.take(50) == pytest.approx(2.0)  # waits for a full bucket, not forever
    clock.now += 2
    assert bucket.take(50) == 0  # granted, leaving a debt of 30 tokens
    assert bucket.take(1) == pytest.approx(3.1)


def test_open_mode_accepts_any_key_as_the_default_source() -> None:
    sources = Sources.open()
    assert sources.is_open
    assert sources.for_key(None) is sources.for_key("anything")
    assert sources.for_key(None).name == "default"  # type: ignore[union-attr]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    return path


def test_sources_file_keys_origins_and_rate(tmp_path: Path) -> None:
    clock = Clock()
    path = _write(
        tmp_path,
        "sources:\n"
        "  - {name: web, write_key: wk_web_123, origins: ['https://shop.example'], rate_limit: 5}\n"
        "  - {name: tills, write_key: wk_tills_456}\n",
    )
    sources = Sources.load(path, clock)
    web = sources.for_key("wk_web_123")
    assert web is not None and web.name == "web"
    assert sources.for_key("nope") is None and sources.for_key(None) is None
    assert web.allows_origin("https://shop.example") and not web.allows_origin("https://evil")
    assert sources.origin_allowed_anywhere("https://shop.example")
    assert web.admit(10) == 0  # burst of 2 s
    assert web.admit(5) == 1
    clock.now += 1
    assert web.admit(5) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sources: []", "sources"),
        ("sources:\n  - {name: Web!, write_key: wk_web_123}", "sources.0.name"),
        ("sources:\n  - {name: web, write_key: short}", "sources.0.write_key"),
        (
            "sources:\n  - {name: a, write_key: samekey1}\n  - {name: b, write_key: samekey1}",
            "share",
        ),
        ("sources: [", "not valid YAML"),
    ],
)
def test_invalid_sources_files_are_rejected(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Sources.load(_write(tmp_path, text))
    assert message in str(info.value)
    assert "samekey1" not in str(info.value)
