"""Sources: who may send touchpoints, from which browser origins, and how fast.

Without a sources file the collector runs open (development): any or no write key is accepted as
the source ``default``. With one, every request must carry a known write key (HTTP Basic username,
as Segment SDKs send it, or ``writeKey`` in the body).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic import ValidationError as PydanticValidationError

from tracker.errors import ConfigError

OPEN_SOURCE = "default"
SOURCE_NAME = r"^[a-z0-9_][a-z0-9_-]{0,31}$"  # the source label in records and metrics


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=SOURCE_NAME)
    write_key: SecretStr = Field(min_length=8)
    origins: list[str] = Field(default_factory=list)  # e.g. https://shop.example.com, or "*"
    rate_limit: float = Field(default=1000.0, gt=0)  # messages per second, bursts of 2 s


class SourcesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[SourceSpec] = Field(min_length=1)


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; ``clock`` is injectable for tests."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.updated = clock()

    def take(self, n: float) -> float:
        """Take ``n`` tokens; return 0 when granted, else the seconds until they would be.

        A request larger than the burst is granted once the bucket is full and leaves it in debt,
        so a big batch is never refused forever and the long-run rate still holds.
        """
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        need = min(n, self.burst)
        if self.tokens >= need:
            self.tokens -= n
            return 0.0
        return (need - self.tokens) / self.rate


@dataclass
class Source:
    name: str
    origins: frozenset[str]
    bucket: TokenBucket | None = field(default=None, repr=False)

    def allows_origin(self, origin: str) -> bool:
        return "*" in self.origins or origin in self.origins

    def admit(self, messages: int) -> int:
        """0 when admitted, else whole seconds to wait (for ``Retry-After``)."""
        if self.bucket is None:
            return 0
        wait = self.bucket.take(messages)
        return 0 if wait == 0 else max(1, math.ceil(wait))


class Sources:
    def __init__(self, sources: list[Source], keys: dict[str, Source]) -> None:
        self._sources = sources
        self._by_key = keys

    @classmethod
    def open(cls) -> Sources:
        return cls([Source(OPEN_SOURCE, frozenset({"*"}))], {})

    @property
    def is_open(self) -> bool:
        return not self._by_key

    def for_key(self, write_key: str | None) -> Source | None:
        if self.is_open:
            return self._sources[0]
        return self._by_key.get(write_key or "")

    def origin_allowed_anywhere(self, origin: str) -> bool:
        return any(s.allows_origin(origin) for s in self._sources)

    @classmethod
    def load(cls, path: Path | None, clock: Callable[[], float] = time.monotonic) -> Sources:
        if path is None:
            return cls.open()
        try:
            data = yaml.safe_load(path.read_text())
            spec = SourcesFile.model_validate(data)
        except OSError as exc:
            raise ConfigError(f"cannot read sources file {path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        except PydanticValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"{path}: {where}: {err['msg']}", field=where) from None
        sources, keys = [], {}
        for s in spec.sources:
            source = Source(
                s.name,
                frozenset(s.origins),
                TokenBucket(s.rate_limit, max(2 * s.rate_limit, 1.0), clock),
            )
            key = s.write_key.get_secret_value()
            if key in keys:
                raise ConfigError(f"{path}: two sources share a write key", field="write_key")
            sources.append(source)
            keys[key] = source
        return cls(sources, keys)
