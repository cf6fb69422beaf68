"""Plain-data forms of the engine's values: customer states for changelog tables, touchpoints for
forwarding between partitions. (Results as warehouse rows: ``tracker.warehouse.sink``.)"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from tracker.core.journeys.engine import CustomerState, Touchpoint
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


def tp_to_list(tp: Touchpoint) -> list[Any]:
    """The compact form: what the rules need once the touchpoint's rule matches are known."""
    if tp.bits < 0:
        raise ValueError("a touchpoint is stored only with its rule matches (bits)")
    return [tp.t, tp.message_id, tp.event, tp.channel, tp.bits]


def tp_from_list(v: list[Any]) -> Touchpoint:
    return Touchpoint(v[0], v[1], "", v[2], v[3], "", _NO_PROPERTIES, v[4])


def result_to_list(r: Result) -> list[Any]:
    return [_KIND_OF[type(r)], *(getattr(r, f) for f in r.__slots__)]


def result_from_list(v: list[Any]) -> Result:
    cls = _KINDS[v[0]]
    args = [tuple(a) if isinstance(a, list) else a for a in v[1:]]
    result: Result = cls(*args)
    return result


def dump_state(state: CustomerState, fingerprint: str) -> dict[str, Any]:
    """A JSON-ready dict of ``state`` (for a changelog-backed table).

    ``fingerprint`` names the journey definitions the touchpoints' rule bits refer to.
    """
    return {
        "f": fingerprint,
        "c": state.customer,
        "v": state.version,
        "h": [tp_to_list(tp) for tp in state.history],
        "e": [[n, result_to_list(r)] for r, n in state.emitted.items()],
        # When a timer must settle it next (JourneyEngine.next_deadline, which a settle sets as
        # state.deadline): a restart rebuilds its timers without evaluating every state again.
        "d": state.deadline,
    }


def load_state(raw: dict[str, Any], fingerprint: str) -> CustomerState:
    """The state back; under changed journey definitions its touchpoints match no rule (their
    bits referred to the old rules, and the properties they were computed from are not kept)."""
    history = [tp_from_list(v) for v in raw["h"]]
    if raw.get("f") != fingerprint:
        for tp in history:
            tp.bits = 0
    return CustomerState(
        customer=raw["c"],
        history=history,
        seen={tp.message_id for tp in history},
        emitted=load_emitted(raw),
        version=raw["v"],
    )


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
