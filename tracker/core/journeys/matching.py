"""Matches: which touchpoints a stage, pain rule or love rule is about.

A match is a small tree of conditions over a touchpoint; every condition given must hold.
``any`` holds when one of its sub-matches does.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "exists")


@dataclass(frozen=True)
class Condition:
    """A property condition: ``properties[key] <op> value``."""

    key: str
    op: str
    value: Any

    def holds(self, properties: dict[str, Any]) -> bool:
        present = self.key in properties
        if self.op == "exists":
            return present is bool(self.value)
        if not present:
            return False
        actual = properties[self.key]
        if self.op == "eq":
            return bool(actual == self.value)
        if self.op == "ne":
            return bool(actual != self.value)
        if self.op == "in":
            return actual in self.value
        if not _comparable(actual, self.value):
            return False
        if self.op == "gt":
            return bool(actual > self.value)
        if self.op == "gte":
            return bool(actual >= self.value)
        if self.op == "lt":
            return bool(actual < self.value)
        return bool(actual <= self.value)  # lte


def _comparable(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return (isinstance(a, numbers) and isinstance(b, numbers)) or (
        isinstance(a, str) and isinstance(b, str)
    )


def _glob(pattern: str | None) -> re.Pattern[str] | None:
    return None if pattern is None else re.compile(fnmatch.translate(pattern))


@dataclass(frozen=True)
class Match:
    event: str | None = None  # glob on the track event name or page/screen name
    type: str | None = None
    path: str | None = None  # glob on properties.path, else context.page.path
    channels: tuple[str, ...] = ()
    where: tuple[Condition, ...] = ()
    any: tuple[Match, ...] = ()
    _event_re: re.Pattern[str] | None = field(default=None, compare=False, repr=False)
    _path_re: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_event_re", _glob(self.event))
        object.__setattr__(self, "_path_re", _glob(self.path))

    @property
    def uses_properties(self) -> bool:
        """Whether the match reads the touchpoint's properties (or its path, which may come from
        them): else it depends on the type, event name and channel alone."""
        return bool(self.where or self.path is not None or any(m.uses_properties for m in self.any))

    def may_match(self, tp: Any) -> bool:
        """Whether ``tp``'s type, event name and channel allow a match (its path and
        properties not looked at): a match that does not may be skipped."""
        return self._names_match(tp) and (not self.any or any(m.may_match(tp) for m in self.any))

    def _names_match(self, tp: Any) -> bool:
        if self.type is not None and tp.type != self.type:
            return False
        if self._event_re is not None and not self._event_re.match(tp.event):
            return False
        return not self.channels or tp.channel in self.channels

    def matches(self, tp: Any) -> bool:
        """``tp`` is a :class:`~tracker.core.journeys.engine.Touchpoint`."""
        return self._names_match(tp) and self.matches_beyond_names(tp)

    def matches_beyond_names(self, tp: Any) -> bool:
        """``matches`` for a touchpoint whose type, event name and channel this match allows
        (:meth:`may_match`): its path, properties and sub-matches. The rule bits of every
        touchpoint go through here (``JourneyEngine.signature``), so no generators."""
        if self._path_re is not None and not self._path_re.match(tp.path):
            return False
        for condition in self.where:
            if not condition.holds(tp.properties):
                return False
        if not self.any:
            return True
        for m in self.any:
            if m.matches(tp):
                return True
        return False
