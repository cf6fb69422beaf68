"""Ground truth of a simulated run, summed from the customers' planned outcomes.

It is computed from what the simulator decided, never from the engine: per journey and stage the
entries, drop-offs (with the pain signals seen before them), recoveries and conversions; per
customer the ids that belong together.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracker.core.journeys.definition import Journey
from tracker.simulate.generate import CustomerPlan


@dataclass
class Truth:
    journeys: tuple[Journey, ...]
    customers: dict[str, list[str]] = field(default_factory=dict)  # key -> linked ids
    entered: Counter[tuple[str, str]] = field(default_factory=Counter)
    dropoffs: Counter[tuple[str, str]] = field(default_factory=Counter)
    recoveries: Counter[tuple[str, str]] = field(default_factory=Counter)
    conversions: Counter[str] = field(default_factory=Counter)
    pain: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # journey, stage, signal
    convert_ms: dict[str, list[int]] = field(default_factory=dict)
    # (journey, customer, stage, pain, love) of every drop-off.
    dropoff_list: list[tuple[str, str, str, tuple[str, ...], tuple[str, ...]]] = field(
        default_factory=list
    )
    conversion_list: list[tuple[str, str]] = field(default_factory=list)
    messages: int = 0  # sent, resends included
    unique_messages: int = 0
    last_deadline: float = 0.0  # seconds from the start: the last planned drop-off deadline
    last_send: float = 0.0
    sends_by_second: Counter[int] = field(default_factory=Counter)  # messages planned per second

    def add(self, plan: CustomerPlan) -> None:
        self.customers[plan.key] = plan.ids
        self.unique_messages += len(plan.touches)
        self.messages += sum(len(d.touches) for d in plan.deliveries)
        for delivery in plan.deliveries:
            self.sends_by_second[int(delivery.at)] += len(delivery.touches)
            self.last_send = max(self.last_send, delivery.at)
        for out in plan.outcomes:
            j = out.journey
            for stage in out.entered:
                self.entered[(j, stage)] += 1
            for stage in out.recoveries:
                self.recoveries[(j, stage)] += 1
            for stage, pain, love, deadline in out.dropoffs:
                self.dropoffs[(j, stage)] += 1
                for signal in pain:
                    self.pain[(j, stage, signal)] += 1
                self.dropoff_list.append((j, plan.key, stage, pain, love))
                self.last_deadline = max(self.last_deadline, deadline)
            if out.converted:
                self.conversions[j] += 1
                self.convert_ms.setdefault(j, []).append(round(out.convert_s * 1000))
                self.conversion_list.append((j, plan.key))

    def funnel(self) -> dict[str, Any]:
        """Per journey: every stage's entries, drop-offs, recoveries and pain; conversions."""
        out: dict[str, Any] = {}
        for journey in self.journeys:
            j = journey.name
            stages = []
            for stage in journey.stages:
                s = stage.name
                pain = {
                    sig: n for (jj, ss, sig), n in sorted(self.pain.items()) if (jj, ss) == (j, s)
                }
                stages.append(
                    {
                        "stage": s,
                        "entered": self.entered[(j, s)],
                        "dropoffs": self.dropoffs[(j, s)],
                        "recoveries": self.recoveries[(j, s)],
                        "pain": pain,
                    }
                )
            times = sorted(self.convert_ms.get(j, []))
            out[j] = {
                "stages": stages,
                "conversions": self.conversions[j],
                "median_convert_ms": times[len(times) // 2] if times else None,
            }
        return out

    def to_json(self, **extra: Any) -> dict[str, Any]:
        return {
            **extra,
            "messages_sent": self.messages,
            "unique_message_ids": self.unique_messages,
            "last_deadline_s": round(self.last_deadline, 3),
            "journeys": self.funnel(),
            "dropoffs": [
                {"journey": j, "customer": c, "stage": s, "pain": list(p), "love": list(lv)}
                for j, c, s, p, lv in sorted(self.dropoff_list)
            ],
            "conversions": [{"journey": j, "customer": c} for j, c in sorted(self.conversion_list)],
            "customers": dict(sorted(self.customers.items())),
        }

    def write(self, path: Path, **extra: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(**extra), indent=1))
