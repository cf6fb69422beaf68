"""What the journey engine emits. Frozen and hashable: a result *is* its identity, so a correction
is the old result with sign -1 and the new one with +1."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StageEntered:
    journey: str
    customer: str
    instance: str  # "<start ms>:<opening messageId>"
    stage: str
    level: int  # 1-based
    at: int  # event time, ms
    message_id: str
    channel: str


@dataclass(frozen=True, slots=True)
class DropOff:
    journey: str
    customer: str
    instance: str
    stage: str
    level: int
    entered_at: int
    at: int  # the deadline that passed: entered_at + timeout, or the instance's expiry
    expired: bool  # the deadline was the journey window's end
    last_event: str
    last_channel: str
    pain: tuple[str, ...]  # signal names seen while at the stage, in order
    love: tuple[str, ...]

    @property
    def time_at_stage_ms(self) -> int:
        return self.at - self.entered_at


@dataclass(frozen=True, slots=True)
class Recovery:
    journey: str
    customer: str
    instance: str
    stage: str
    level: int
    dropped_at: int
    at: int  # when the customer moved on


@dataclass(frozen=True, slots=True)
class Conversion:
    journey: str
    customer: str
    instance: str
    started_at: int
    at: int
    channel: str

    @property
    def time_to_convert_ms(self) -> int:
        return self.at - self.started_at


Result = StageEntered | DropOff | Recovery | Conversion
