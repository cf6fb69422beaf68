"""Plain-data forms of the engine's values: customer states for changelog tables, touchpoints for
forwarding between partitions. (Results as warehouse rows: ``tracker.warehouse.sink``.)"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson

from tracker.core.journeys.engine import (
    NEVER,
    Change,
    Cursor,
    CustomerState,
    JourneyEngine,
    OpenInstance,
    Past,
    Touchpoint,
)
from tracker.core.journeys.results import Conversion, DropOff, Recovery, Result, StageEntered

_KINDS: dict[str, type[Any]] = {
    "stage": StageEntered,
    "dropoff": DropOff,
    "recovery": Recovery,
    "conversion": Conversion,
}
_KIND_OF = {cls: name for name, cls in _KINDS.items()}


def kind_of(r: Result) -> str:
    """The name of ``r``'s kind: stage, dropoff, recovery or conversion."""
    return _KIND_OF[type(r)]


_NO_PROPERTIES: Mapping[str, Any] = MappingProxyType({})
# A state stores where its scan stands from this many live touchpoints on. Even one saves its
# next settle more than the cursors cost to store and load: a settle that scans again compares
# every live result with those emitted, one that goes on looks only at the new ones.
TAIL_STORED_FROM = 1


def tp_to_list(tp: Touchpoint) -> list[Any]:
    """The compact form: what the rules need once the touchpoint's rule matches are known."""
    if tp.stored is not None:
        return tp.stored
    if tp.bits < 0:
        raise ValueError("a touchpoint is stored only with its rule matches (bits)")
    return [tp.t, tp.message_id, tp.event, tp.channel, tp.bits]


def tps_from_lists(vs: list[list[Any]]) -> list[Touchpoint]:
    """Touchpoints from their compact forms. A state's live history is built again on every
    load, so this sets the slots itself: half the time of calling the class with nine
    arguments (``tracker bench history``)."""
    new = object.__new__
    tps = []
    for v in vs:
        tp = new(Touchpoint)
        tp.t, tp.message_id, tp.event, tp.channel, tp.bits = v
        tp.type = tp.path = ""
        tp.properties = _NO_PROPERTIES
        tp.stored = v
        tps.append(tp)
    return tps


def result_to_list(r: Result) -> list[Any]:
    return [_KIND_OF[type(r)], *r]


def result_from_list(v: list[Any]) -> Result:
    cls = _KINDS[v[0]]
    if cls is DropOff:  # the one kind with tuples: its pain and love names, last
        return cls(*v[1:-2], tuple(v[-2]), tuple(v[-1]))  # type: ignore[no-any-return]
    result: Result = cls(*v[1:])
    return result


def cursor_to_list(c: Cursor) -> list[Any]:
    i = c.inst
    inst = (
        None
        if i is None
        else [i.start, i.instance, i.level, i.entered_at, i.deadline, i.expires, i.dropped_at,
              i.pain, i.love]
    )  # fmt: skip
    return [inst, c.last_event, c.last_channel]


def cursor_from_list(v: list[Any]) -> Cursor:
    i = v[0]
    inst = (
        None
        if i is None
        else OpenInstance(i[0], i[1], i[2], i[3], i[4], i[5], i[6], list(i[7]), list(i[8]))
    )
    return Cursor(inst, v[1], v[2])


def dump_state(state: CustomerState, fingerprint: str) -> dict[str, Any]:
    """A JSON-ready dict of ``state`` (for a changelog-backed table).

    ``fingerprint`` names the journey definitions the touchpoints' rule bits refer to. The
    folded past (cutoff ``k``, cursors ``q``, recent messageIds ``r``, hot ``x``) is written
    only once there is one; ``w`` is the live history's estimated size (``JourneyEngine.add``);
    ``t``, ``s`` and ``o`` are where the last settle's scan stands (``JourneyEngine.settle``).
    """
    raw: dict[str, Any] = {
        "f": fingerprint,
        "c": state.customer,
        "v": state.version,
        "h": [tp.stored or tp_to_list(tp) for tp in state.history],  # most were loaded
        "e": [[n, result_to_list(r)] for r, n in state.emitted.items()],
        # When a timer must settle it next (JourneyEngine.next_deadline, which a settle sets as
        # state.deadline): a restart rebuilds its timers without evaluating every state again.
        "d": state.deadline,
    }
    if state.cutoff > -NEVER:
        raw["k"] = state.cutoff
    if state.cursors is not None:
        raw["q"] = [cursor_to_list(c) for c in state.cursors]
    if state.recent:
        raw["r"] = state.recent
    if state.hot:
        raw["x"] = 1
    if state.weight >= 0 and state.history:
        raw["w"] = state.weight  # the hot-key estimate, so a load need not count it again
    if state.tail is not None and len(state.history) >= TAIL_STORED_FROM:
        # Where the scan of the live history stands, so a load need not scan it again, and
        # which of the results the clock added (their places in "e").
        places = {r: i for i, r in enumerate(state.emitted)}
        clocked = [places.get(r, -1) for r in state.clocked]
        if -1 not in clocked:
            raw["t"] = [cursor_to_list(c) for c in state.tail]
            if state.scanned != len(state.history):
                raw["s"] = state.scanned
            if clocked:
                raw["o"] = clocked
    return raw


def load_state(raw: dict[str, Any], fingerprint: str) -> CustomerState:
    """The state back; under changed journey definitions its touchpoints match no rule (their
    bits referred to the old rules, and the properties they were computed from are not kept)
    and its folded past starts again empty. A state stored without a folded past (by an older
    version, too) loads as never folded."""
    history = tps_from_lists(raw["h"])
    same = raw.get("f") == fingerprint
    if not same:
        for tp in history:
            tp.bits, tp.stored = 0, None
    emitted = [(result_from_list(r), n) for n, r in raw["e"]]
    state = CustomerState(
        customer=raw["c"],
        history=history,
        seen={tp.message_id for tp in history},
        emitted=Counter(dict(emitted)),
        version=raw["v"],
        cutoff=raw.get("k", -NEVER),
        cursors=_cursors(raw) if same else None,
        recent=dict(raw.get("r") or {}),
        hot=bool(raw.get("x")),
        weight=raw.get("w", -1) if history else 0,
        # Its timer was set when it was stored: a settle that finds the same deadline sets none.
        deadline=raw.get("d") if same else None,
    )
    tail = raw.get("t")
    if same and tail is not None:
        state.tail = [cursor_from_list(v) for v in tail]
        state.scanned = raw.get("s", len(history))
        state.clocked = [emitted[i][0] for i in raw.get("o", ())]
    return state


def _cursors(raw: Mapping[str, Any]) -> list[Cursor] | None:
    q = raw.get("q")
    return None if q is None else [cursor_from_list(v) for v in q]


def load_counted(raw: dict[str, Any], fingerprint: str) -> CustomerState:
    """What the open-instance gauge counts of ``raw`` (its live results and checkpoint),
    without its history (cheaper than the whole state)."""
    same = raw.get("f") == fingerprint
    return CustomerState(
        raw["c"], emitted=load_emitted(raw), cursors=_cursors(raw) if same else None
    )


def dump_past(state: CustomerState) -> dict[str, Any] | None:
    """``state``'s folded past as plain data, for the owner an identity merge gives it to (see
    ``JourneyEngine.adopt_past``); None when it has none."""
    if state.cursors is None:
        return None
    return {
        "k": state.cutoff,
        "q": [cursor_to_list(c) for c in state.cursors],
        "r": state.recent,
    }


def load_past(raw: Mapping[str, Any] | None) -> Past | None:
    if raw is None:
        return None
    return Past(raw["k"], [cursor_from_list(v) for v in raw["q"]], dict(raw["r"]))


def dump_bounded(
    engine: JourneyEngine, state: CustomerState, now: int
) -> tuple[bytes, list[Change]]:
    """The stored form of ``state``, never over ``engine.max_state_bytes``, and the changes that
    took (stage their rows before the state is written). Past the bound the state is folded
    completely; if it is still over it, its recent messageIds go (the summary left, cursors
    and at most one live result per journey, is a few KB under any sane definitions)."""
    fingerprint = engine.fingerprint
    raw = orjson.dumps(dump_state(state, fingerprint))
    if len(raw) <= engine.max_state_bytes:
        return raw, []
    engine.counts["state_guard"] += 1
    changes = engine.fold_all(state, now)
    raw = orjson.dumps(dump_state(state, fingerprint))
    if len(raw) > engine.max_state_bytes:
        state.recent = {}
        raw = orjson.dumps(dump_state(state, fingerprint))
    return raw, changes


def load_emitted(raw: dict[str, Any]) -> Counter[Result]:
    """Only what ``raw`` emitted (cheaper than the whole state)."""
    return Counter({result_from_list(r): n for n, r in raw["e"]})


def stored_deadline(raw: dict[str, Any], fingerprint: str) -> tuple[bool, int | None]:
    """(known, deadline): the timer deadline stored with ``raw``, when it was stored under these
    journey definitions; else (False, None) and the state must be evaluated."""
    if raw.get("f") != fingerprint or "d" not in raw:
        return False, None
    deadline = raw["d"]
    return True, None if deadline is None else int(deadline)
