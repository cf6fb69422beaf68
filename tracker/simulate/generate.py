"""Simulated customers: what each one does, when, from which device, and how it is delivered.

Every customer is planned from its own seeded random generator, so a run is the same for the same
``--seed`` whatever the pace of sending. A plan decides first, stage by stage, what the customer
goes through (moves on in time, stops, or misses the deadline and comes back), and only then
produces the touchpoints that make it so, with gaps kept well inside or well outside each
deadline. The outcome of the plan *is* the ground truth; nothing here runs the journey engine.

Times in a plan are seconds from the start of the run. Delivery follows what SDKs do: a device
queues its messages and flushes them every second or two (so a customer's devices deliver out of
order), a phone sometimes goes offline for a few seconds, back-office systems (store tills, call
centre, courier scanners) send every few seconds, and a batch whose answer was lost is sent again
with the same message ids.

Some devices are used by more than one person: a family laptop that a later customer logs in on
after its first owner did, and a store kiosk that many customers log in on (and that people also
browse on without logging in). Those customers log in on such a device before they use it, so
every touchpoint is still its own customer's under the identity rules (docs/journeys.md, rule 1);
the kiosk's anonymous browsing matches no stage and no signal, and stays the kiosk's once it has
had more users than a device may have.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tracker.core.journeys.definition import Journey
from tracker.errors import TrackerError
from tracker.simulate.scenarios import MIX, SCENARIOS, JourneyPlan, Scenario, Step

MAX_GAP_S = 20.0  # an in-time move never waits longer than this, whatever the timeout
MAX_STALL_S = 60.0  # a stage whose deadline is further away than this is never stalled past
MIN_DEADLINE_S = 2.0  # closer to a deadline than this, a customer stops instead of moving on
SPACING_S = 0.1  # a customer's touchpoints are at least this far apart
DUPLICATE_RATE = 0.02  # a delivery sent twice (its answer was lost)
OFFLINE_RATE = 0.05  # a phone delivery held back while the phone is offline
SYSTEM_FLUSH_S = 2.0  # back-office systems send what they collected this often
DEVICE_ROUTES_PREFIX = "anon-"  # the route of a device is its anonymousId
HOUSEHOLD_RATE = 0.15  # a logged-in customer also uses a laptop an earlier one logged in on
KIOSK_RATE = 0.2  # a logged-in customer who also uses the store kiosk
SHARED_AFTER_S = 1.0  # a shared device's next user logs in at least this long after the last one


@dataclass
class Touch:
    """One touchpoint a customer makes, before it is put on the wire."""

    t: float  # true time, seconds from the run's start
    message_id: str
    fields: dict[str, Any]  # the Segment message without its timestamp
    route: str  # the device's anonymousId, or the back-office channel that sends it
    skew_ms: int  # how far the sender's clock is off


@dataclass(order=True)
class Delivery:
    at: float  # when it is sent, seconds from the run's start
    seq: int
    route: str = field(compare=False)
    skew_ms: int = field(compare=False)
    touches: list[Touch] = field(compare=False)
    resend: bool = field(default=False, compare=False)


@dataclass
class Outcome:
    """What one journey instance of one customer comes to, by construction."""

    journey: str
    entered: list[str] = field(default_factory=list)
    # Every deadline missed: (stage, pain, love, deadline). A customer who comes back after it
    # (a recovery) still has the drop-off on record, as rule 5 says.
    dropoffs: list[tuple[str, tuple[str, ...], tuple[str, ...], float]] = field(
        default_factory=list
    )
    recoveries: list[str] = field(default_factory=list)
    converted: bool = False
    convert_s: float = 0.0


@dataclass
class CustomerPlan:
    index: int
    scenario: str
    key: str  # the customer key rule 1 gives: the userId once logged in, else the device's id
    ids: list[str]
    touches: list[Touch]
    deliveries: list[Delivery]
    outcomes: list[Outcome]


@dataclass
class _Device:
    anon_id: str
    kind: str
    skew_ms: int
    flush_s: float
    phase: float
    login_t: float = math.inf  # from then on its messages carry the userId too
    # Used by other customers too: the customer logs in on it just before using it, never
    # before logging in elsewhere; "kiosk" devices also see anonymous browsing.
    shared: str = ""  # "", "household" or "kiosk"


@dataclass
class _Event:
    t: float
    step: Step
    level: int = 0  # the stage level this touchpoint enters (0: not a stage touchpoint)


def _skew(rng: random.Random) -> int:
    if rng.random() < 0.05:
        return rng.choice((-1, 1)) * rng.randint(3_600_000, 7_200_000)  # a clock hours off
    return rng.randint(-90_000, 90_000)


class Planner:
    """Plans customers for one run: a scenario (or the mix) against the loaded journeys."""

    def __init__(self, journeys: tuple[Journey, ...], scenario: str, seed: int) -> None:
        self.journeys = {j.name: j for j in journeys}
        self.seed = seed
        self.prefix = f"s{seed}"
        # Laptops whose owner logged in on them, with the time from which another may log in.
        self.households: list[tuple[_Device, float]] = []
        self.kiosk = _Device(f"{DEVICE_ROUTES_PREFIX}{self.prefix}-kiosk", "web", 0, 1.0, 0.0,
                             shared="kiosk")  # fmt: skip
        if scenario == "mix":
            self.mix = MIX
        elif scenario in SCENARIOS:
            self.mix = {scenario: 1.0}
        else:
            raise TrackerError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}, mix")
        for name in self.mix:
            s = SCENARIOS[name]
            for plan in (s.journey, s.follow_on):
                if plan is not None:
                    self._check(plan)

    def _check(self, plan: JourneyPlan) -> None:
        journey = self.journeys.get(plan.journey)
        if journey is None:
            raise TrackerError(
                f"the journeys file has no journey {plan.journey!r}, which the scenario drives"
            )
        names = [s.name for s in journey.stages]
        if names != [s.stage for s in plan.stages]:
            raise TrackerError(
                f"journey {plan.journey!r} has stages {names}; the scenario expects "
                f"{[s.stage for s in plan.stages]}"
            )

    def customers(self, rate: float, duration: float) -> Iterator[CustomerPlan]:
        """Customers in arrival order; arrivals are paced so the touchpoints come at ``rate``/s."""
        arrival, index = 0.0, 0
        while arrival < duration:
            plan = self.customer(index, arrival)
            yield plan
            arrival += len(plan.touches) / rate
            index += 1

    def customer(self, index: int, arrival: float) -> CustomerPlan:
        rng = random.Random(f"{self.seed}:{index}")
        names = list(self.mix)
        scenario = SCENARIOS[rng.choices(names, weights=[self.mix[n] for n in names])[0]]
        return _CustomerBuilder(self, scenario, rng, index, arrival).build()


class _CustomerBuilder:
    def __init__(
        self, planner: Planner, scenario: Scenario, rng: random.Random, index: int, start: float
    ) -> None:
        self.planner = planner
        self.scenario = scenario
        self.rng = rng
        self.index = index
        self.start = start
        self.name = f"{planner.prefix}-c{index}"
        self.user_id = f"user-{self.name}"
        self.events: list[_Event] = []
        self.outcomes: list[Outcome] = []

    def build(self) -> CustomerPlan:
        rng = self.rng
        first = self.scenario.journey.stages[0].steps
        closing = self._walk(self.scenario.journey, self.start, rng.choice(first))
        follow = self.scenario.follow_on
        if (
            follow is not None
            and closing is not None
            and closing[1] == self.scenario.follow_on_step
        ):
            self._walk(follow, closing[0], None)
        events = sorted(self.events, key=lambda e: e.t)
        needs_login = [
            e.t for e in events if e.step.offline or e.level >= self.scenario.journey.login_level
        ]
        login_t = needs_login[0] - 0.05 if needs_login else math.inf
        devices = [self._device(0, "web")]
        if login_t < math.inf:
            if rng.random() < 0.6:
                devices.append(self._device(1, "app"))
            if rng.random() < 0.25:
                devices.append(self._device(2, "web"))
            devices += self._shared_devices(login_t)
        touches = self._touches(events, devices, login_t)
        if devices[0].login_t < math.inf:  # its laptop, for someone else of the household
            self.planner.households.append((devices[0], devices[0].login_t + SHARED_AFTER_S))
            del self.planner.households[:-50]
        logged_in = login_t < math.inf
        key = self.user_id if logged_in else devices[0].anon_id
        ids = sorted({d.anon_id for d in devices} | ({self.user_id} if logged_in else set()))
        return CustomerPlan(
            index=self.index,
            scenario=self.scenario.name,
            key=key,
            ids=ids,
            touches=touches,
            deliveries=self._deliveries(touches, devices),
            outcomes=self.outcomes,
        )

    def _shared_devices(self, login_t: float) -> list[_Device]:
        """The devices other customers use too that this one will use after logging in."""
        rng, out = self.rng, []
        if rng.random() < HOUSEHOLD_RATE:
            free = [d for d, since in self.planner.households if since <= login_t]
            if free:
                d = rng.choice(free[-10:])
                out.append(_Device(d.anon_id, "web", d.skew_ms, d.flush_s, d.phase,
                                   shared="household"))  # fmt: skip
        if rng.random() < KIOSK_RATE:
            k = self.planner.kiosk
            out.append(_Device(k.anon_id, k.kind, k.skew_ms, k.flush_s, k.phase, shared="kiosk"))
        return out

    def _device(self, n: int, kind: str) -> _Device:
        flush = self.rng.uniform(0.5, 2.0)
        return _Device(
            f"{DEVICE_ROUTES_PREFIX}{self.name}-d{n}",
            kind,
            _skew(self.rng),
            flush,
            self.rng.uniform(0, flush),
        )

    def _walk(self, plan: JourneyPlan, t0: float, opening: Step | None) -> tuple[float, str] | None:
        """One journey instance from its first stage at ``t0``; returns (time, step) of the
        touchpoint that converts it, or None when the customer stops."""
        rng, sc = self.rng, self.scenario
        journey = self.planner.journeys[plan.journey]
        expires = t0 + journey.window_ms / 1000
        out = Outcome(plan.journey, entered=[plan.stages[0].stage])
        self.outcomes.append(out)
        if opening is not None:
            self.events.append(_Event(t0, opening, level=1))
        t = t0
        for level, stage in enumerate(plan.stages[:-1], start=1):
            timeout = journey.stages[level - 1].timeout_ms
            until = min(t + timeout / 1000, expires) if timeout is not None else expires
            room = until - t  # time to the stage's deadline
            pain = rng.random() < stage.pain_chance and bool(stage.pain)
            love = rng.random() < stage.love_chance and bool(stage.love)
            p_drop = stage.drop * (sc.pain_boost if pain else 1) * (sc.love_damp if love else 1)
            r = rng.random()
            move = (
                "drop" if r < min(p_drop, 0.95) else "stall" if r < p_drop + stage.stall else "go"
            )
            gap = 0.0
            if move == "stall":
                gap = room * rng.uniform(1.3, 1.6)
                if room > MAX_STALL_S or t + gap > expires - MIN_DEADLINE_S:
                    move = "drop"
            if move == "go":
                gap = min(room * rng.uniform(0.15, 0.45), MAX_GAP_S)
                if room < MIN_DEADLINE_S:
                    move = "drop"
            # What the customer meets at this stage, before its deadline (and before moving on).
            span = min(room, MAX_GAP_S) if move != "go" else gap
            side = [s for s, shown in ((stage.pain, pain), (stage.love, love)) if shown]
            seen: list[tuple[float, Step]] = [
                (t + rng.uniform(0.1, 0.85) * span, rng.choice(steps)) for steps in side
            ]
            for _ in range(rng.randint(0, 1)):
                seen.append((t + rng.uniform(0.1, 0.85) * span, rng.choice(sc.noise)))
            seen.sort(key=lambda x: x[0])
            self.events += [_Event(at, step) for at, step in seen]
            if move != "go":
                out.dropoffs.append(
                    (
                        stage.stage,
                        tuple(s.signal for _, s in seen if s.signal and s in stage.pain),
                        tuple(s.signal for _, s in seen if s.signal and s in stage.love),
                        until,
                    )
                )
            if move == "drop":
                return None
            if move == "stall":
                out.recoveries.append(stage.stage)
            t += gap
            nxt = plan.stages[level]
            step = rng.choice(nxt.steps)
            self.events.append(_Event(t, step, level=level + 1))
            out.entered.append(nxt.stage)
        out.converted = True
        out.convert_s = t - t0
        return t, self.events[-1].step.name

    def _touches(self, events: list[_Event], devices: list[_Device], login_t: float) -> list[Touch]:
        rng = self.rng
        touches: list[Touch] = []
        last = -math.inf
        used: list[_Device] = []
        n = 0

        def add(t: float, fields: dict[str, Any], route: str, skew: int) -> float:
            nonlocal n, last
            t = max(t, last + SPACING_S)
            last = t
            mid = f"{self.name}-m{n}"
            n += 1
            touches.append(Touch(round(t, 3), mid, {"messageId": mid, **fields}, route, skew))
            return t

        for event in events:
            if event.t >= login_t and devices[0].login_t == math.inf:
                # The customer logs in: on the device in hand, then on every other one it has
                # (a shared one only when about to use it).
                for d in [*used, *[d for d in devices if d not in used and not d.shared]]:
                    d.login_t = max(login_t, last + SPACING_S)
                    add(
                        d.login_t,
                        {
                            "type": "identify",
                            "anonymousId": d.anon_id,
                            "userId": self.user_id,
                            "channel": d.kind,
                            "traits": {"plan": "member"},
                        },
                        d.anon_id,
                        d.skew_ms,
                    )
            step = event.step
            fields: dict[str, Any] = {"type": step.type, "properties": step.properties()}
            fields["name" if step.type == "page" else "event"] = step.name
            if step.offline:
                fields.update(userId=self.user_id, channel=step.channel)
                add(event.t, fields, step.channel, rng.randint(-500, 500))
                continue
            choices = [d for d in devices if not step.channel or d.kind == step.channel]
            if event.t < login_t:
                choices = [d for d in choices if d.anon_id == devices[0].anon_id or d in used]
                if len(devices) > 1 and rng.random() < 0.3:
                    choices = [d for d in devices if not step.channel or d.kind == step.channel]
                choices = [d for d in choices if not d.shared]
            elif waiting := [d for d in choices if d.shared and d.login_t == math.inf]:
                choices = waiting[:1]  # a shared device it has is used first
            if not choices:
                # An app-only touchpoint (always after login) from a customer without the app:
                # the customer installs it and logs in there first.
                device = self._device(len(devices), step.channel)
                devices.append(device)
                device.login_t = max(event.t - 0.05, last + SPACING_S)
                add(
                    device.login_t,
                    {
                        "type": "identify",
                        "anonymousId": device.anon_id,
                        "userId": self.user_id,
                        "channel": device.kind,
                    },
                    device.anon_id,
                    device.skew_ms,
                )
                choices = [device]
            device = rng.choice(choices)
            if device.shared and device.login_t == math.inf:
                self._log_in_on_shared(device, event.t, add)
            if device not in used:
                used.append(device)
            fields.update(anonymousId=device.anon_id, channel=device.kind)
            if event.t >= device.login_t or device.shared:  # shared: logged in just now
                fields["userId"] = self.user_id
            add(event.t, fields, device.anon_id, device.skew_ms)
        return touches

    def _log_in_on_shared(
        self, device: _Device, t: float, add: Callable[[float, dict[str, Any], str, int], float]
    ) -> None:
        """Log in on a shared device just before using it; at the kiosk, someone browsed it
        without logging in first (a touchpoint no journey matches)."""
        if device.shared == "kiosk":
            fields = {"type": "track", "event": "Kiosk Browsed", "properties": {"screen": "home"},
                      "anonymousId": device.anon_id, "channel": device.kind}  # fmt: skip
            add(t - 0.1, fields, device.anon_id, device.skew_ms)
        fields = {"type": "identify", "anonymousId": device.anon_id, "userId": self.user_id,
                  "channel": device.kind}  # fmt: skip
        device.login_t = add(t - 0.05, fields, device.anon_id, device.skew_ms)

    def _deliveries(self, touches: list[Touch], devices: list[_Device]) -> list[Delivery]:
        rng = self.rng
        flush = {d.anon_id: (d.flush_s, d.phase) for d in devices}
        offline_kind = {d.anon_id for d in devices if d.kind == "app"}
        batches: dict[tuple[str, float], list[Touch]] = {}
        for touch in touches:
            every, phase = flush.get(touch.route, (SYSTEM_FLUSH_S, 0.0))
            tick = phase + every * math.ceil((touch.t - phase) / every + 1e-9)
            batches.setdefault((touch.route, round(tick, 3)), []).append(touch)
        out: list[Delivery] = []
        for (route, at), batch in batches.items():
            if route in offline_kind and rng.random() < OFFLINE_RATE:
                at += rng.uniform(2.0, 6.0)
            skew = batch[0].skew_ms
            out.append(Delivery(at, 0, route, skew, batch))
            if rng.random() < DUPLICATE_RATE:
                out.append(Delivery(at + rng.uniform(1.0, 3.0), 0, route, skew, batch, resend=True))
        out.sort(key=lambda d: d.at)
        return out


def wire_message(touch: Touch, start_ms: int, sent_ms: int) -> dict[str, Any]:
    """The message as its sender puts it on the wire: its own clock for timestamp and sentAt."""
    return {
        **touch.fields,
        "timestamp": iso(start_ms + round(touch.t * 1000) + touch.skew_ms),
        "sentAt": iso(sent_ms + touch.skew_ms),
    }


def iso(ms: int) -> str:
    """Epoch milliseconds as the ISO-8601 UTC time SDKs send."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
