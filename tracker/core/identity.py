"""Rule 1: a customer is the set of ids linked by ``identify`` and ``alias``.

Links are undirected for membership (union-find); the customer key is the ``userId`` of the
component's most recent link (by event time, then messageId), so it does not depend on the order
in which links arrive. An id that was never linked is its own customer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Link:
    from_id: str  # an anonymousId, or an alias's previousId
    user_id: str
    t: int
    message_id: str

    @property
    def order(self) -> tuple[int, str]:
        return (self.t, self.message_id)


def link_of(record: dict[str, Any]) -> Link | None:
    """The identity link a touchpoint record carries, if any.

    ``alias`` links previousId to userId; any other message that names both an anonymousId and a
    userId (``identify``, and every event an SDK sends after it) links those two.
    """
    user = record.get("user_id") or ""
    other = (
        record.get("previous_id") if record.get("type") == "alias" else record.get("anonymous_id")
    )
    if not user or not other or other == user:
        return None
    return Link(str(other), str(user), int(record["event_time_ms"]), str(record["message_id"]))


class Identities:
    def __init__(self) -> None:
        self._parent: dict[str, str] = {}
        self._latest: dict[str, Link] = {}  # root -> the component's most recent link
        self._members: dict[str, set[str]] = {}  # root -> every id of the component

    def _find(self, x: str) -> str:
        parent = self._parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def add(self, link: Link) -> list[tuple[str, str]]:
        """Add a link; return ``(id, new key)`` for every id whose customer key changed."""
        a, b = self._find(link.from_id), self._find(link.user_id)
        members = self._members.pop(a, {a}) | self._members.pop(b, {b})
        before = {m: self.key(m) for m in members}
        known = [k for k in (self._latest.get(a), self._latest.get(b), link) if k is not None]
        newest = max(known, key=lambda k: k.order)
        # Union by name keeps the result independent of the order links arrive in.
        root, child = (a, b) if a <= b else (b, a)
        if child != root:
            self._parent[child] = root
            self._latest.pop(child, None)
        self._parent.setdefault(root, root)
        self._latest[root] = newest
        self._members[root] = members
        return [(m, newest.user_id) for m in sorted(members) if before[m] != newest.user_id]

    def key(self, any_id: str) -> str:
        """The customer key of ``any_id``."""
        latest = self._latest.get(self._find(any_id))
        return latest.user_id if latest is not None else any_id
