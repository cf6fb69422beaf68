"""The journey rules (docs/journeys.md states them; this module is their implementation).

The engine recomputes a customer's results whenever the history or the clock changes, and emits
the difference to what it emitted before. So the results never depend on arrival order: whatever
order touchpoints and links came in, once they are all in, the emitted results sum to those of the
complete history. It recomputes from a checkpoint, not from the first touchpoint: what no late
data can reach any more is folded into one cursor per journey (docs/journeys.md, "Bounded
state"), so a customer's state and the cost of a touchpoint stay bounded.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracker.core.journeys.definition import Journey
from tracker.core.journeys.results import Conversion, DropOff, Recovery, Result, StageEntered

NEVER = 2**62


@dataclass(slots=True)
class Touchpoint:
    """The part of a touchpoint record the rules look at."""

    t: int  # event time, ms
    message_id: str
    type: str
    event: str
    channel: str
    path: str
    properties: Mapping[str, Any]
    # Which rules (stages, pain, love of every journey) this touchpoint matches, one bit each;
    # set by JourneyEngine.add. -1: not computed (evaluate then matches the rules itself).
    bits: int = -1
    # Its stored form when it was read from one (``codec.tps_from_lists``), written back as is.
    stored: list[Any] | None = field(default=None, repr=False, compare=False)

    @property
    def order(self) -> tuple[int, str]:
        return (self.t, self.message_id)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Touchpoint:
        props = record.get("properties") or {}
        page = (record.get("context") or {}).get("page") or {}
        path = props.get("path") if isinstance(props.get("path"), str) else page.get("path")
        return cls(
            t=int(record["event_time_ms"]),
            message_id=str(record["message_id"]),
            type=str(record["type"]),
            event=str(record["event"]),
            channel=str(record["channel"]),
            path=path if isinstance(path, str) else "",
            properties=props,
        )


@dataclass(slots=True)
class OpenInstance:
    start: int
    instance: str
    level: int  # 1-based index of the stage reached
    entered_at: int
    deadline: int
    expires: int
    dropped_at: int | None = None
    pain: list[str] = field(default_factory=list)
    love: list[str] = field(default_factory=list)


# Pain and love names kept per open stage: a bot's "slow page" would otherwise grow a drop-off's
# signal list without end. The first ones met are kept.
MAX_SIGNALS = 64


@dataclass(slots=True)
class Cursor:
    """Where one journey's scan of a history stands: the rest of the history needs nothing else
    from the touchpoints before it (the open instance, and the previous touchpoint's event and
    channel, which a drop-off reports)."""

    inst: OpenInstance | None = None
    last_event: str = ""
    last_channel: str = ""

    def copy(self) -> Cursor:
        i = self.inst
        if i is not None:
            i = OpenInstance(i.start, i.instance, i.level, i.entered_at, i.deadline, i.expires,
                             i.dropped_at, list(i.pain), list(i.love))  # fmt: skip
        return Cursor(i, self.last_event, self.last_channel)


class _Rules:
    """One journey's rule matches for a touchpoint: from its ``bits`` (the journey's rules start
    at bit ``base``: stages, then pain, then love), or matched again when ``base`` is None."""

    __slots__ = ("base", "journey", "n_pain", "n_stages")

    def __init__(self, journey: Journey, base: int | None) -> None:
        self.journey, self.base = journey, base
        self.n_stages, self.n_pain = len(journey.stages), len(journey.pain)

    def stage_hit(self, i: int, tp: Touchpoint) -> bool:
        if self.base is None:
            return self.journey.stages[i].match.matches(tp)
        return bool(tp.bits >> (self.base + i) & 1)

    def signals(self, tp: Touchpoint) -> tuple[list[str], list[str]]:
        j = self.journey
        if self.base is None:
            return (
                [p.name for p in j.pain if p.match.matches(tp)],
                [p.name for p in j.love if p.match.matches(tp)],
            )
        bits = tp.bits >> (self.base + self.n_stages)
        if not bits:
            return [], []
        pain = [p.name for k, p in enumerate(j.pain) if bits >> k & 1]
        love = [p.name for k, p in enumerate(j.love) if bits >> (self.n_pain + k) & 1]
        return pain, love


def advance(rules: _Rules, customer: str, cur: Cursor, t: int, out: list[Result]) -> None:
    """Let time pass to ``t`` with no touchpoint: the open instance's deadline passes when time
    goes strictly beyond it (a drop-off), and the instance closes once ``t`` is past its window."""
    inst = cur.inst
    if inst is None:
        return
    if inst.dropped_at is None and t > inst.deadline:
        out.append(_drop_off(rules, customer, cur, inst))
        inst.dropped_at = inst.deadline
    if t > inst.expires:
        cur.inst = None


def _drop_off(rules: _Rules, customer: str, cur: Cursor, inst: OpenInstance) -> DropOff:
    return DropOff(
        rules.journey.name,
        customer,
        inst.instance,
        rules.journey.stages[inst.level - 1].name,
        inst.level,
        inst.entered_at,
        inst.deadline,
        inst.deadline == inst.expires,
        cur.last_event,
        cur.last_channel,
        tuple(inst.pain),
        tuple(inst.love),
    )


def clock(rules: _Rules, customer: str, cur: Cursor, now: int, out: list[Result]) -> int | None:
    """``advance`` to ``now`` without moving ``cur``: the drop-off the clock adds, if any, and
    the deadline at which it adds one next (None: none)."""
    inst = cur.inst
    if inst is None or inst.dropped_at is not None:
        return None
    if now > inst.deadline:
        out.append(_drop_off(rules, customer, cur, inst))
        return None
    return inst.deadline


def _deadline(journey: Journey, level: int, entered: int, expires: int) -> int:
    timeout = journey.stages[level - 1].timeout_ms
    return expires if timeout is None else min(entered + timeout, expires)


def scan(
    rules: _Rules, customer: str, cur: Cursor, tps: Iterable[Touchpoint], out: list[Result]
) -> None:
    """Rules 3-5 over ``tps`` (in order), from ``cur`` on; moves ``cur`` past them."""
    journey = rules.journey
    stages = journey.stages
    last_level = len(stages)
    for tp in tps:
        advance(rules, customer, cur, tp.t, out)
        inst = cur.inst
        if inst is None:
            if rules.stage_hit(0, tp):
                expires = tp.t + journey.window_ms
                inst = cur.inst = OpenInstance(
                    start=tp.t,
                    instance=f"{tp.t}:{tp.message_id}",
                    level=1,
                    entered_at=tp.t,
                    deadline=_deadline(journey, 1, tp.t, expires),
                    expires=expires,
                )
                out.append(
                    StageEntered(
                        journey.name,
                        customer,
                        inst.instance,
                        stages[0].name,
                        1,
                        tp.t,
                        tp.message_id,
                        tp.channel,
                    )
                )
            cur.last_event, cur.last_channel = tp.event, tp.channel
            continue
        if inst.dropped_at is None:
            pain, love = rules.signals(tp)
            if pain and len(inst.pain) < MAX_SIGNALS:
                inst.pain.extend(pain[: MAX_SIGNALS - len(inst.pain)])
            if love and len(inst.love) < MAX_SIGNALS:
                inst.love.extend(love[: MAX_SIGNALS - len(inst.love)])
        nxt = stages[inst.level]
        if rules.stage_hit(inst.level, tp):
            if inst.dropped_at is not None:
                out.append(
                    Recovery(
                        journey.name,
                        customer,
                        inst.instance,
                        stages[inst.level - 1].name,
                        inst.level,
                        inst.dropped_at,
                        tp.t,
                    )
                )
            inst.level += 1
            out.append(
                StageEntered(
                    journey.name,
                    customer,
                    inst.instance,
                    nxt.name,
                    inst.level,
                    tp.t,
                    tp.message_id,
                    tp.channel,
                )
            )
            if inst.level == last_level:
                out.append(
                    Conversion(journey.name, customer, inst.instance, inst.start, tp.t, tp.channel)
                )
                cur.inst = None
            else:
                inst.entered_at = tp.t
                inst.deadline = _deadline(journey, inst.level, tp.t, inst.expires)
                inst.dropped_at = None
                inst.pain.clear()
                inst.love.clear()
        cur.last_event, cur.last_channel = tp.event, tp.channel


def evaluate(
    journey: Journey, customer: str, history: list[Touchpoint], now: int, base: int | None = None
) -> list[Result]:
    """Rules 3-5 over one customer's history (sorted by event time, then messageId), as of ``now``.

    ``now`` is the processing-time clock: deadlines that have not passed it yet produce nothing.
    With ``base``, rule matches are read from each touchpoint's ``bits`` (this journey's rules
    start at bit ``base``: stages, then pain, then love) instead of being matched again.
    """
    return evaluate_with_deadline(journey, customer, history, now, base)[0]


def evaluate_with_deadline(
    journey: Journey,
    customer: str,
    history: list[Touchpoint],
    now: int,
    base: int | None = None,
    start: Cursor | None = None,
) -> tuple[list[Result], int | None]:
    """``evaluate``, and the deadline at which the results change next if no data arrives.

    With ``start``, the history goes on from that cursor (a folded past) and only the results
    from there on are listed. Only the last open instance waits on the clock: every earlier one
    was closed by a later touchpoint. Its drop-off is due when time passes its deadline, unless
    it already dropped off.
    """
    out: list[Result] = []
    rules = _Rules(journey, base)
    cur = start.copy() if start is not None else Cursor()
    scan(rules, customer, cur, history, out)
    advance(rules, customer, cur, now, out)
    inst = cur.inst
    return out, inst.deadline if inst is not None and inst.dropped_at is None else None


def _no_results() -> Counter[Result]:
    """An empty Counter without ``Counter.__init__`` (Python code, a few times per customer per
    batch): ``dict``'s own constructor leaves it as ``Counter()`` would."""
    return Counter.__new__(Counter)


@dataclass
class CustomerState:
    """Everything the engine keeps for one customer: the live part of the history (touchpoints at
    or after ``cutoff``) and, per journey, the cursor the touchpoints before it were folded into."""

    customer: str
    history: list[Touchpoint] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # messageIds of the live history
    emitted: Counter[Result] = field(default_factory=_no_results)  # the live results only
    version: int = 0  # bumped whenever emitted changes; orders the warehouse's result rows
    # When the results change next with no new data, as found by the last settle() (not stored).
    deadline: int | None = None
    # Touchpoints before this event time were folded into ``cursors`` and are no longer held.
    cutoff: int = -NEVER
    cursors: list[Cursor] | None = None  # the checkpoint at cutoff, per journey; None: none folded
    recent: dict[str, int] = field(default_factory=dict)  # folded messageIds -> event time
    hot: bool = False  # went over a hard bound once: its journeys use its newest touchpoints
    # Final results an early fold found between an add() and the settle() that emits them.
    unsettled: Counter[Result] = field(default_factory=_no_results)
    weight: int = -1  # the live history's estimated stored bytes; -1: not counted yet
    # Not stored: where the last settle's scan of the live history stands, per journey (None:
    # to be scanned again from the checkpoint), how many touchpoints it covered, and what the
    # clock added then. A settle after touchpoints added behind those scans only the new ones.
    tail: list[Cursor] | None = field(default=None, compare=False, repr=False)
    scanned: int = field(default=0, compare=False, repr=False)
    clocked: list[Result] = field(default_factory=list, compare=False, repr=False)


@dataclass
class Past:
    """A customer's folded past, as it moves with an identity merge."""

    cutoff: int
    cursors: list[Cursor]
    recent: dict[str, int]


Change = tuple[int, Result]  # (+1 | -1, result)


def _diff(old: Counter[Result], new: Counter[Result]) -> list[Change]:
    """The changes from ``old`` to ``new``: withdrawals first, in ``old``'s order, then
    additions in ``new``'s."""
    changes: list[Change] = []
    for r, n in old.items():
        gone = n - new.get(r, 0)
        if gone > 0:
            changes += [(-1, r)] * gone
    for r, n in new.items():
        more = n - old.get(r, 0)
        if more > 0:
            changes += [(+1, r)] * more
    return changes


def _order(tp: Touchpoint) -> tuple[int, str]:
    return (tp.t, tp.message_id)


def _same(a: Counter[Result], b: Counter[Result]) -> bool:
    """Equal multisets (neither holds a count of 0): dict equality, in C, where Counter's own
    ``==`` walks both in Python."""
    return dict.__eq__(a, b) is True


DEFAULT_MAX_LIVE_TOUCHPOINTS = 2000
# (type, event name, channel) triples whose rule matches are kept: a bound against senders that
# make up event names.
SIGNATURES_CACHED = 10_000
DEFAULT_MAX_STATE_BYTES = 512 * 1024


class JourneyEngine:
    """Applies the rules to customer states: ingest, clock ticks and identity merges.

    State stays bounded (docs/journeys.md, "Bounded state"): each ``settle`` folds the
    touchpoints no late data can reach any more into a per-journey cursor and drops the results
    they gave (they are final, and stay in the warehouse); ``add`` folds a key early once it
    holds more than a hard bound (a hot key). ``counts`` tallies what was left out or folded,
    for the worker to move into its metrics.
    """

    def __init__(
        self,
        journeys: Iterable[Journey],
        *,
        lateness_ms: int,
        max_live_touchpoints: int = DEFAULT_MAX_LIVE_TOUCHPOINTS,
        max_state_bytes: int = DEFAULT_MAX_STATE_BYTES,
        fold_step_ms: int | None = None,
    ) -> None:
        self.journeys = tuple(journeys)
        self.lateness_ms = lateness_ms
        self.max_live_touchpoints = max(max_live_touchpoints, 2)
        self.max_state_bytes = max_state_bytes
        # The cut moves in steps of F = L (at least a second), so a customer folds at most
        # once per step, and 2L-3L of touchpoints stay live: identity merges of histories
        # younger than that stay exact (docs/journeys.md). Any F keeps late data exact.
        self.fold_step = max(lateness_ms if fold_step_ms is None else fold_step_ms, 1000)
        self.bases: list[int] = []
        self.rules: list[Any] = []
        for j in self.journeys:
            self.bases.append(len(self.rules))
            self.rules += [s.match for s in j.stages] + [p.match for p in (*j.pain, *j.love)]
        self._rules = [_Rules(j, b) for j, b in zip(self.journeys, self.bases, strict=True)]
        self._property_rules = [i for i, r in enumerate(self.rules) if r.uses_properties]
        self._name_rules = [i for i, r in enumerate(self.rules) if not r.uses_properties]
        self._by_name: dict[tuple[str, str, str], tuple[int, list[tuple[int, Any]]]] = {}
        self._stage_masks = [
            ((1 << len(j.stages)) - 1) << b for j, b in zip(self.journeys, self.bases, strict=True)
        ]
        self._journeys_hit: dict[int, int] = {}
        digest = hashlib.sha1(repr(self.journeys).encode(), usedforsecurity=False)
        self.fingerprint = digest.hexdigest()[:12]  # what a touchpoint's bits refer to
        # hot_keys, folded, left_out_behind_fold, left_out_hot_key, pasts_dropped, state_guard
        self.counts: Counter[str] = Counter()

    def signature(self, tp: Touchpoint) -> int:
        """The bits of every rule ``tp`` matches. What the type, event name and channel decide
        is worked out once per such triple (``SIGNATURES_CACHED`` of them): the bits of rules
        that look at nothing else, and which rules on paths or properties may match."""
        key = (tp.type, tp.event, tp.channel)
        known = self._by_name.get(key)
        if known is None:
            bits = 0
            for i in self._name_rules:
                if self.rules[i].matches(tp):
                    bits |= 1 << i
            maybe = [(1 << i, self.rules[i].matches_beyond_names) for i in self._property_rules
                     if self.rules[i].may_match(tp)]  # fmt: skip
            if len(self._by_name) >= SIGNATURES_CACHED:
                self._by_name.clear()
            known = self._by_name[key] = (bits, maybe)
        bits, maybe = known
        for bit, matches in maybe:
            if matches(tp):
                bits |= bit
        return bits

    def is_late(self, tp: Touchpoint, now: int) -> bool:
        """Rule 6: data arriving more than L after its event time stays out of journeys."""
        return tp.t < now - self.lateness_ms

    def cut(self, now: int) -> int:
        """Where ``settle(state, now)`` folds: C = floor((now-L)/F)*F - F, so C <= now-L-F and
        no touchpoint before C can still be taken in (``is_late`` rejects t < now-L)."""
        step = self.fold_step
        return (now - self.lateness_ms) // step * step - step

    def add(self, state: CustomerState, tps: Iterable[Touchpoint]) -> int:
        """Insert touchpoints in order. Returns how many changed the history.

        A messageId counts once, and of its copies the one that arrives last is kept: a sender
        that retries a request sends the same messages with a new ``sentAt``, so the copies can
        differ in event time, and the warehouse keeps the copy written last as well (see
        docs/warehouse.md). A copy with the event time already held changes nothing, and so does
        a copy of a touchpoint already folded. A touchpoint before the state's cutoff is left
        out (counted). Past the hard bounds the key is folded early and marked hot.
        """
        added = 0
        history, seen = state.history, state.seen
        if state.weight < 0:
            state.weight = sum(self._weight(tp) for tp in history)
        for tp in tps:
            if tp.t < state.cutoff:
                self.counts["left_out_hot_key" if state.hot else "left_out_behind_fold"] += 1
                continue
            mid = tp.message_id
            if mid in state.recent:
                continue
            if mid in seen:
                held = [i for i, h in enumerate(history) if h.message_id == mid]
                if any(history[i].t == tp.t for i in held):
                    continue
                for i in reversed(held):
                    state.weight -= self._weight(history[i])
                    del history[i]
                state.tail = None
            seen.add(mid)
            if tp.bits < 0:  # a copy: the caller's touchpoint stays as it was
                tp = Touchpoint(tp.t, mid, tp.type, tp.event, tp.channel, tp.path, tp.properties,
                                self.signature(tp))  # fmt: skip
            at = bisect.bisect_right(history, tp.order, key=_order)
            history.insert(at, tp)
            if at < state.scanned:  # behind the last scan: scan again from the checkpoint
                state.tail = None
            state.weight += self._weight(tp)
            added += 1
            if len(history) > self.max_live_touchpoints or state.weight > self.max_state_bytes:
                self._fold_hot(state)
                history = state.history
        return added

    def _weight(self, tp: Touchpoint) -> int:
        """About what ``tp`` costs in a stored state: its own entry, and the results it may give
        (one or two per journey whose stages it matches) with their instance and messageIds."""
        own = len(tp.message_id) + len(tp.event) + len(tp.channel) + 48
        journeys = self._journeys_hit.get(tp.bits)
        if journeys is None:
            journeys = sum(1 for mask in self._stage_masks if tp.bits & mask)
            if len(self._journeys_hit) < 4096:  # one entry per rule signature met
                self._journeys_hit[tp.bits] = journeys
        return own + journeys * (4 * len(tp.message_id) + 400)

    def _fold_hot(self, state: CustomerState) -> None:
        """Fold ``state`` early, keeping its newest touchpoints within half of each bound."""
        history = state.history
        keep, budget = 0, self.max_state_bytes // 2
        for tp in reversed(history):
            budget -= self._weight(tp)
            if keep >= self.max_live_touchpoints // 2 or budget < 0:
                break
            keep += 1
        at = len(history) - max(keep, 1)
        cut = history[at].t
        if cut <= history[0].t:  # all of the rest share one event time: fold them too
            cut += 1
        if not state.hot:
            self.counts["hot_keys"] += 1
            state.hot = True
        state.unsettled.update(self._fold(state, cut))

    def _fold(self, state: CustomerState, cut: int) -> list[Result]:
        """Move ``state``'s cutoff to ``cut``: scan the live touchpoints before it from the
        checkpoint, let time pass to ``cut``, and keep the cursors as the new checkpoint.
        Returns the results found on the way: final, since nothing before ``cut`` is taken in
        any more. Folded messageIds are kept in ``recent`` while a copy could still count
        (event time within L of the cut); older ones are forgotten."""
        if cut <= state.cutoff:
            return []
        history = state.history
        k = bisect.bisect_left(history, cut, key=lambda tp: tp.t)
        out: list[Result] = []
        if k or state.cursors is not None:
            cursors = state.cursors or [Cursor() for _ in self.journeys]
            folded = history[:k]
            for rules, cur in zip(self._rules, cursors, strict=True):
                scan(rules, state.customer, cur, folded, out)
                advance(rules, state.customer, cur, cut, out)
            state.cursors = cursors
            for tp in folded:
                state.recent[tp.message_id] = tp.t
                state.seen.discard(tp.message_id)
            del history[:k]
            self.counts["folded"] += k
            if state.weight >= 0:  # kept counted: else the next add counts it all again
                state.weight -= sum(self._weight(tp) for tp in folded)
            # The scan of what stays live goes on as it was when it reached past the cut (time
            # passing to the cut then to the next touchpoint is the same as going to it at
            # once); otherwise it starts again from the new checkpoint.
            if state.tail is not None and state.scanned > k:
                state.scanned -= k
            else:
                state.tail = None
        state.cutoff = cut
        forget = cut - self.lateness_ms
        if state.recent and min(state.recent.values()) < forget:
            state.recent = {m: t for m, t in state.recent.items() if t >= forget}
        if len(state.recent) > self.max_live_touchpoints:  # a hot key: its newest ids only
            newest = sorted(state.recent.items(), key=lambda kv: kv[1])
            state.recent = dict(newest[-self.max_live_touchpoints :])
        return out

    def remove(self, state: CustomerState, message_ids: Iterable[str]) -> int:
        """Take touchpoints out (an identity link gave them to another customer). Returns
        #removed; they may come back later, so their messageIds are forgotten too. A folded
        touchpoint cannot be taken out of the past."""
        gone = set(message_ids) & state.seen
        if gone:
            state.seen -= gone
            state.history = [tp for tp in state.history if tp.message_id not in gone]
            state.weight = -1
            state.tail = None
        return len(gone)

    def _start(self, state: CustomerState, j: int) -> Cursor | None:
        return state.cursors[j] if state.cursors is not None else None

    def results(self, state: CustomerState, now: int) -> Counter[Result]:
        """Every journey's live results as of ``now`` (from the checkpoint on); sets
        ``state.deadline``."""
        out: Counter[Result] = Counter()
        due: int | None = None
        for j, (journey, base) in enumerate(zip(self.journeys, self.bases, strict=True)):
            results, deadline = evaluate_with_deadline(
                journey, state.customer, state.history, now, base, self._start(state, j)
            )
            out.update(results)
            if deadline is not None and (due is None or deadline < due):
                due = deadline
        state.deadline = due
        return out

    def settle(self, state: CustomerState, now: int) -> list[Change]:
        """Recompute as of ``now`` and return the corrections that make ``emitted`` right, then
        fold what no late data can reach any more (its results are final and leave the state).

        Also sets ``state.deadline``: when a timer must settle this customer again.

        The scan of the live history goes on from where the last settle left it when only
        touchpoints after it came (the usual case); anything else scans it again from the
        checkpoint. Either way the results are those of the whole live history: a scan never
        looks ahead, so the results of a prefix do not depend on what follows it.
        """
        name = state.customer
        tail = state.tail
        again = tail is None or bool(state.unsettled)
        if tail is None or again:
            tail = state.tail = [c.copy() for c in state.cursors or [Cursor() for _ in self._rules]]
            state.scanned = 0
        scanned: list[Result] = []
        tps = state.history[state.scanned :] if state.scanned else state.history
        if tps:
            for rules, cur in zip(self._rules, tail, strict=True):
                scan(rules, name, cur, tps, scanned)
        state.scanned = len(state.history)
        clocked: list[Result] = []
        due: int | None = None
        for rules, cur in zip(self._rules, tail, strict=True):
            deadline = clock(rules, name, cur, now, clocked)
            if deadline is not None and (due is None or deadline < due):
                due = deadline
        state.deadline = due
        if again:
            changes = self._replace(state, Counter(scanned + clocked))
        elif scanned or clocked != state.clocked:
            changes = self._update(state, Counter(scanned + clocked), Counter(state.clocked))
        else:
            changes = []
        state.clocked = clocked
        final = self._fold(state, self.cut(now))
        if final:
            state.emitted -= Counter(final)
        return changes

    def _replace(self, state: CustomerState, new: Counter[Result]) -> list[Change]:
        """``new`` are all live results: the changes from ``emitted`` (and the results an early
        fold found, owed since) to them."""
        owed = state.unsettled
        if not owed and _same(new, state.emitted):
            return []
        changes = _diff(state.emitted, new + owed if owed else new)
        state.emitted = new  # what an early fold found is final: it leaves the state at once
        if owed:
            state.unsettled = Counter()
        if changes:
            state.version += 1
        return changes

    def _update(
        self, state: CustomerState, added: Counter[Result], old: Counter[Result]
    ) -> list[Change]:
        """The clock's results ``old`` give way to ``added`` (the new touchpoints' results and
        the clock's now); the rest of ``emitted`` stands."""
        changes = _diff(old, added)
        if changes:
            emitted = state.emitted
            for sign, r in changes:
                left = emitted[r] + sign
                if left > 0:
                    emitted[r] = left
                else:
                    del emitted[r]
            state.version += 1
        return changes

    def fold_all(self, state: CustomerState, now: int) -> list[Change]:
        """Fold every live touchpoint (the size guard's last resort); returns the changes, as a
        ``settle`` does. The key counts as hot from then on."""
        if state.history:
            if not state.hot:
                self.counts["hot_keys"] += 1
                state.hot = True
            state.unsettled.update(self._fold(state, state.history[-1].t + 1))
        return self.settle(state, now)

    def retract_all(self, state: CustomerState) -> list[Change]:
        """Withdraw everything emitted for ``state`` (its customer key is going away). Final
        results already folded out of the state stay where they are."""
        changes: list[Change] = [(-1, r) for r in state.emitted.elements()]
        state.emitted = Counter()
        state.tail = None
        if changes:
            state.version += 1
        return changes

    def past(self, state: CustomerState) -> Past | None:
        """``state``'s folded past, if it has one (for :meth:`adopt_past`)."""
        if state.cursors is None:
            return None
        return Past(state.cutoff, state.cursors, state.recent)

    def adopt_past(self, owner: CustomerState, past: Past | None) -> bool:
        """A merged-away customer's folded past goes to ``owner`` (before its live touchpoints
        are added). Exact when only one side has a folded past: the owner takes the member's
        cursors, and touchpoints it held before the member's cut are folded onto them. When both
        have one, the owner keeps its own and the member's is dropped: returns False (counted as
        ``pasts_dropped``; its final results stay under the member's key in the warehouse)."""
        if past is None:
            return True
        owner.recent.update({m: t for m, t in past.recent.items() if m not in owner.seen})
        if owner.cursors is not None:
            self.counts["pasts_dropped"] += 1
            return False
        owner.cursors = [c.copy() for c in past.cursors]
        owner.tail = None
        owner.cutoff = min(owner.cutoff, past.cutoff)  # the owner folded nothing: it may go back
        owner.unsettled.update(self._fold(owner, past.cutoff))
        return True

    def next_deadline(self, state: CustomerState) -> int | None:
        """The earliest drop-off deadline of ``state``'s history that ``state.emitted`` lacks:
        when a timer must settle this customer, with no clock needed to find it.

        It may lie in the past: a deadline that passed while no worker owned the customer (a
        crash, a restart, a rebalance) is due at once, and settling it then emits the drop-off
        with its true ``at``, as it would have been emitted on time. Evaluating as of the far
        future lists every drop-off the history leads to if nothing else arrives.
        """
        due = [
            r.at
            for j, (journey, base) in enumerate(zip(self.journeys, self.bases, strict=True))
            for r in evaluate_with_deadline(
                journey, state.customer, state.history, NEVER, base, self._start(state, j)
            )[0]
            if isinstance(r, DropOff) and r not in state.emitted
        ]
        return min(due) if due else None
