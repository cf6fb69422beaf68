"""Rule 1: which customer a touchpoint belongs to (docs/journeys.md states the rules).

Two structures, both plain data:

- the *merges*: userIds joined by ``alias`` (previousId -> userId). Union-find; a component's
  customer key is the userId of its most recent alias (by event time, then messageId), so it does
  not depend on the order aliases arrive in. An id never aliased is its own key.
- the *devices*: per anonymousId, the links that name it together with a userId (an ``identify``,
  any message carrying both ids, an ``alias`` from it), in event-time order. An anonymous
  touchpoint (no userId) belongs to the user of the device's latest link at or before it, or,
  before the first link, to the first user the device identified as. Linking a device to a user
  never joins that user with the device's other users.

A device linked to more than ``max_users`` userIds, or whose user changes more than
``DEVICE_CHANGES_MAX`` times, is *shared* (a kiosk, a family laptop past the bound): its anonymous
touchpoints stay with the device's own id. Both conditions only grow with the set of links, so
whether a device is shared does not depend on arrival order either.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

MAX_USERS_PER_DEVICE = 10
DEVICE_CHANGES_MAX = 100  # changes of user kept per device; more = shared
# Links kept per device, changes of user and the repeats between them that late links may still
# split; beyond it the oldest repeats go first.
DEVICE_LINKS_MAX = 4 * DEVICE_CHANGES_MAX


@dataclass(frozen=True, slots=True)
class Link:
    from_id: str  # an anonymousId, or an alias's previousId
    user_id: str
    t: int
    message_id: str
    alias: bool = False  # an explicit merge of from_id into user_id

    @property
    def order(self) -> tuple[int, str]:
        return (self.t, self.message_id)


def links_of(record: dict[str, Any]) -> list[Link]:
    """The identity links a touchpoint record carries.

    ``alias`` merges previousId into userId; any message that names both an anonymousId and a
    userId (``identify``, every event an SDK sends after it, an ``alias`` too) links that device
    to that user.
    """
    user = str(record.get("user_id") or "")
    if not user:
        return []
    t, mid = int(record["event_time_ms"]), str(record["message_id"])
    out = []
    previous = str(record.get("previous_id") or "") if record.get("type") == "alias" else ""
    if previous and previous != user:
        out.append(Link(previous, user, t, mid, alias=True))
    anon = str(record.get("anonymous_id") or "")
    if anon and anon != user:
        out.append(Link(anon, user, t, mid))
    return out


class Merges:
    """userIds joined by aliases; ``key`` is a component's customer key."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}
        self._latest: dict[str, Link] = {}  # root -> the component's most recent alias
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
        """Add an alias; return ``(id, new key)`` for every id whose customer key changed."""
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
        latest = self._latest.get(self._find(any_id))
        return latest.user_id if latest is not None else any_id


DeviceLink = tuple[int, str, str]  # (event time, messageId, userId)


@dataclass(slots=True)
class Device:
    """One anonymousId's links, sorted by (event time, messageId)."""

    links: list[DeviceLink] = field(default_factory=list)
    users: set[str] = field(default_factory=set)
    shared: bool = False

    def user_at(self, order: tuple[int, str]) -> str | None:
        """The userId an anonymous touchpoint at ``order`` belongs to; None: the device's own."""
        if self.shared or not self.links:
            return None
        i = bisect.bisect_right(self.links, order, key=lambda link: (link[0], link[1]))
        return self.links[i - 1][2] if i else self.links[0][2]

    def changes(self) -> list[DeviceLink]:
        """The links that change the device's user: what attribution depends on."""
        out: list[DeviceLink] = []
        for link in self.links:
            if not out or out[-1][2] != link[2]:
                out.append(link)
        return out


class Identities:
    """The merges and the devices: which customer every touchpoint belongs to."""

    def __init__(self, max_users: int = MAX_USERS_PER_DEVICE) -> None:
        self.max_users = max_users
        self.merges = Merges()
        self.devices: dict[str, Device] = {}

    def add(self, link: Link, horizon: int | None = None) -> tuple[list[tuple[str, str]], bool]:
        """Add a link. Returns the ``(id, new key)`` of every id an alias re-keyed, and whether
        the attribution of ``link.from_id``'s anonymous touchpoints changed.

        ``horizon``: no link older than this can arrive any more (now - allowed lateness), so
        repeats of a user older than it can never be split by another user's link and are
        dropped.
        """
        rekeyed = self.merges.add(link) if link.alias else []
        return rekeyed, self._add_device_link(link, horizon)

    def _add_device_link(self, link: Link, horizon: int | None) -> bool:
        device = self.devices.setdefault(link.from_id, Device())
        if device.shared:
            return False
        entry = (link.t, link.message_id, link.user_id)
        i = bisect.bisect_left(device.links, entry)
        if i < len(device.links) and device.links[i] == entry:
            return False
        before = device.changes()
        device.links.insert(i, entry)
        device.users.add(link.user_id)
        after = device.changes()
        if len(device.users) > self.max_users or len(after) > DEVICE_CHANGES_MAX:
            self.devices[link.from_id] = Device(shared=True)
            return True
        if horizon is not None or len(device.links) > DEVICE_LINKS_MAX:
            _compact(device, after, horizon)
        return after != before

    def user_key(self, user_id: str) -> str:
        """The customer key of a userId (or of any id): its alias component's key."""
        return self.merges.key(user_id)

    def device_user(self, anonymous_id: str, order: tuple[int, str]) -> str | None:
        """The userId an anonymous touchpoint of this device at ``order`` belongs to, before
        aliases; None when it stays with the device's own id."""
        device = self.devices.get(anonymous_id)
        return device.user_at(order) if device is not None else None

    def owner(self, user_id: str, anonymous_id: str, order: tuple[int, str]) -> str:
        """The id a touchpoint is attributed to, before aliases: its userId; else its device's
        user at that time; else its anonymousId."""
        if user_id:
            return user_id
        return self.device_user(anonymous_id, order) or anonymous_id

    def key(self, user_id: str, anonymous_id: str, order: tuple[int, str]) -> str:
        """The customer key of a touchpoint."""
        return self.user_key(self.owner(user_id, anonymous_id, order))

    def is_shared(self, anonymous_id: str) -> bool:
        device = self.devices.get(anonymous_id)
        return device is not None and device.shared


def _compact(device: Device, changes: list[DeviceLink], horizon: int | None) -> None:
    """Drop repeats (links whose predecessor names the same user) that no late link can split:
    those older than ``horizon``; and beyond ``DEVICE_LINKS_MAX`` links, the oldest repeats."""
    keep = set(changes)
    links = [lk for lk in device.links if lk in keep or horizon is None or lk[0] >= horizon]
    excess = len(links) - DEVICE_LINKS_MAX
    if excess > 0:
        out = []
        for lk in links:
            if excess > 0 and lk not in keep:
                excess -= 1
                continue
            out.append(lk)
        links = out
    device.links = links
