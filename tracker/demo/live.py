"""The demo's live view: redrawn every second on a terminal, a line every few seconds otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TextIO

from tracker.demo.report import JourneyFigures

CLEAR = "\x1b[H\x1b[2J"


@dataclass
class Snapshot:
    phase: str  # "sending" or "settling"
    elapsed: float
    duration: float
    customers: int
    sent: int
    rate: float  # messages acknowledged per second, over the last second
    figures: dict[str, JourneyFigures]
    recent: list[tuple[Any, ...]] = field(default_factory=list)  # journey, stage, customer, pain


def open_journeys(figures: dict[str, JourneyFigures]) -> int:
    """Instances started that have neither converted nor dropped off without coming back."""
    return sum(
        j.stages[0].entered - j.conversions - sum(s.dropoffs - s.recoveries for s in j.stages)
        for j in figures.values()
    )


class LiveView:
    def __init__(self, out: TextIO, *, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self._last_line = -1e9

    def show(self, snap: Snapshot) -> None:
        if self.tty:
            self.out.write(CLEAR + self.frame(snap) + "\n")
        elif snap.elapsed - self._last_line >= 5:
            self._last_line = snap.elapsed
            self.out.write(self.line(snap) + "\n")
        self.out.flush()

    def line(self, snap: Snapshot) -> str:
        drops = sum(s.dropoffs for j in snap.figures.values() for s in j.stages)
        conv = sum(j.conversions for j in snap.figures.values())
        return (
            f"[{snap.elapsed:5.0f}s {snap.phase}] sent {snap.sent} ({snap.rate:.0f}/s), "
            f"customers {snap.customers}, open journeys {open_journeys(snap.figures)}, "
            f"drop-offs {drops}, conversions {conv}"
        )

    def frame(self, snap: Snapshot, width: int = 24) -> str:
        head = f"Touchpoint Tracker demo — {snap.phase} " + (
            f"{snap.elapsed:.0f}/{snap.duration:.0f} s"
            if snap.phase == "sending"
            else f"{snap.elapsed:.0f} s (waiting for the last deadlines)"
        )
        lines = [head, self.line(snap), ""]
        top = max((s.entered for j in snap.figures.values() for s in j.stages), default=0) or 1
        for j in snap.figures.values():
            lines.append(f"{j.journey}  (converted {j.conversions})")
            for s in j.stages:
                bar = "#" * round(width * s.entered / top)
                lines.append(
                    f"  {s.stage:<16}{bar:<{width}} {s.entered:>5}  dropped {s.dropoffs:>4}"
                    f"  back {s.recoveries:>3}"
                )
        lines += ["", "drop-offs just detected:"]
        for journey, stage, customer, pain in snap.recent:
            lines.append(f"  {journey}/{stage}  {customer}  pain: {', '.join(pain) or '-'}")
        return "\n".join(lines)
