"""What the journey engine emits. Immutable and hashable: a result *is* its identity, so a
correction is the old result with sign -1 and the new one with +1.

Results are named tuples: the engine keeps them in multisets and compares them all the time,
which tuples do in C (the four kinds differ in length, so no two kinds are ever equal).
"""

from __future__ import annotations

from typing import NamedTuple


class StageEntered(NamedTuple):
    journey: str
    customer: str
    instance: str  # "<start ms>:<opening messageId>"
    stage: str
    level: int  # 1-based
    at: int  # event time, ms
    message_id: str
    channel: str


class DropOff(NamedTuple):
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


class Recovery(NamedTuple):
    journey: str
    customer: str
    instance: str
    stage: str
    level: int
    dropped_at: int
    at: int  # when the customer moved on


class Conversion(NamedTuple):
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
