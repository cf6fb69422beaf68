"""Journey definitions: the YAML file users write, validated into plain frozen dataclasses.

An invalid file is rejected with the line and the field that are wrong::

    journeys.yaml:14: journeys[0].stages[2].timeout: duration must look like 30s, 15m, 2h or 7d
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from tracker.core.journeys.matching import OPERATORS, Condition, Match
from tracker.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_ .:/-]{0,63}$"


def parse_duration_ms(value: Any) -> int:
    """``30s``, ``15m``, ``2h``, ``7d`` (or a number of seconds) in milliseconds."""
    if isinstance(value, bool):
        raise ValueError("duration must look like 30s, 15m, 2h or 7d")
    if isinstance(value, int | float):
        ms = int(value * 1000)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError("duration must look like 30s, 15m, 2h or 7d")
        ms = int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if ms <= 0:
        raise ValueError("duration must be positive")
    return ms


# -- the file's schema -----------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchSpec(_Strict):
    event: str | None = None
    type: str | None = None
    page: str | None = None
    path: str | None = None
    channel: str | list[str] | None = None
    where: dict[str, Any] = Field(default_factory=dict)
    any: list[MatchSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> MatchSpec:
        if not any(
            (self.event, self.type, self.page, self.path, self.channel, self.where, self.any)
        ):
            raise ValueError("a match needs at least one of event, page, path, channel, where, any")
        if self.event and self.page:
            raise ValueError("give either event or page, not both")
        return self

    @field_validator("where")
    @classmethod
    def _conditions(cls, where: dict[str, Any]) -> dict[str, Any]:
        for key, cond in where.items():
            if isinstance(cond, dict):
                unknown = set(cond) - set(OPERATORS)
                if unknown or len(cond) != 1:
                    raise ValueError(
                        f"{key}: one operator of {', '.join(OPERATORS)} expected, got {list(cond)}"
                    )
                op, value = next(iter(cond.items()))
                if op == "in" and not isinstance(value, list):
                    raise ValueError(f"{key}: 'in' takes a list")
        return where

    def compile(self) -> Match:
        channels = (self.channel,) if isinstance(self.channel, str) else tuple(self.channel or ())
        conditions = []
        for key, cond in self.where.items():
            if isinstance(cond, dict):
                op, value = next(iter(cond.items()))
                conditions.append(Condition(key, op, tuple(value) if op == "in" else value))
            else:
                conditions.append(Condition(key, "eq", cond))
        return Match(
            event=self.event or self.page,
            type=self.type or ("page" if self.page else None),
            path=self.path,
            channels=channels,
            where=tuple(conditions),
            any=tuple(m.compile() for m in self.any),
        )


class StageSpec(_Strict):
    name: str = Field(pattern=_NAME)
    match: MatchSpec
    timeout: str | int | float | None = None

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        if v is not None:
            parse_duration_ms(v)
        return v


class SignalSpec(_Strict):
    name: str = Field(pattern=_NAME)
    match: MatchSpec


class JourneySpec(_Strict):
    name: str = Field(pattern=_NAME)
    window: str | int | float
    stages: list[StageSpec] = Field(min_length=2)
    pain: list[SignalSpec] = Field(default_factory=list)
    love: list[SignalSpec] = Field(default_factory=list)

    @field_validator("window", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        parse_duration_ms(v)
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> JourneySpec:
        for what, names in (
            ("stage", [s.name for s in self.stages]),
            ("signal", [s.name for s in [*self.pain, *self.love]]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what} names must be unique; repeated: {', '.join(dupes)}")
        return self


class FileSpec(_Strict):
    journeys: list[JourneySpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_journeys(self) -> FileSpec:
        names = [j.name for j in self.journeys]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"journey names must be unique; repeated: {', '.join(dupes)}")
        return self


# -- what the engine uses ----------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    name: str
    match: Match
    timeout_ms: int | None


@dataclass(frozen=True)
class Signal:
    name: str
    match: Match


@dataclass(frozen=True)
class Journey:
    name: str
    window_ms: int
    stages: tuple[Stage, ...]
    pain: tuple[Signal, ...] = ()
    love: tuple[Signal, ...] = ()


def _compile(spec: JourneySpec) -> Journey:
    return Journey(
        name=spec.name,
        window_ms=parse_duration_ms(spec.window),
        stages=tuple(
            Stage(
                s.name,
                s.match.compile(),
                parse_duration_ms(s.timeout) if s.timeout is not None else None,
            )
            for s in spec.stages
        ),
        pain=tuple(Signal(p.name, p.match.compile()) for p in spec.pain),
        love=tuple(Signal(p.name, p.match.compile()) for p in spec.love),
    )


# -- loading with line numbers -----------------------------------------------------------------


def _to_python(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, (*path, key), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "file"


def loads(text: str, *, origin: str = "<journeys>") -> tuple[Journey, ...]:
    """Parse and validate a journeys file; :class:`ConfigError` names the line and field."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{origin}{line}: not valid YAML: {exc}", field=None) from None
    if root is None:
        raise ConfigError(f"{origin}: the file is empty", field="journeys")
    lines: dict[tuple[Any, ...], int] = {}
    data = _to_python(root, (), lines)
    try:
        spec = FileSpec.model_validate(data)
    except PydanticValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # The deepest location the file has a line for.
        known = next((loc[:i] for i in range(len(loc), -1, -1) if loc[:i] in lines), ())
        field = _where(loc)
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{origin}:{lines.get(known, 1)}: {field}: {msg}", field=field) from None
    return tuple(_compile(j) for j in spec.journeys)


def load(path: Path) -> tuple[Journey, ...]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read journeys file {path}: {exc}", field=None) from None
    return loads(text, origin=str(path))
