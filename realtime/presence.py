"""Who is in a room, and how the room hears who came and went.

``Presence`` keeps each room's users over all their connections, with per-connection
state; a user arrives with their first connection and leaves with their last, not when
a second tab opens or closes. With Redis, ``SharedPresence`` (realtime/cluster/) extends
it to the rooms as every node sees them.

``PresenceChanges`` announces arrivals and departures a room at a time: those of one
interval (``PRESENCE_BATCH_SECONDS``, longer in a larger room) go out together, so a
burst of N joins costs each member one event or a few rather than N (docs/protocol.md
§5.7, ``presence:changed``).
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import operator
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

# (document_id, user ids who left, {user id: username} of those who joined)
Publish = Callable[[uuid.UUID, list[uuid.UUID], dict[uuid.UUID, str]], None]

# Users are listed in the order of their ids (as 128-bit integers): a page ends at a
# user id, and the next starts after it, whoever arrived or left in between.
by_id = operator.attrgetter("int")


@dataclass(frozen=True, slots=True)
class PresencePage:
    """A page of a room's presence, for a join ack or ``presence:list``."""

    entries: orjson.Fragment  # the users' entries, in the order of their ids
    count: int  # users in the room
    more: bool  # users after the page's last: ask for them after it


def encode_page(
    listed: list[uuid.UUID], entry: Callable[[uuid.UUID], bytes], count: int, more: bool
) -> PresencePage:
    return PresencePage(orjson.Fragment(b"[" + b",".join(map(entry, listed)) + b"]"), count, more)


class Departure(enum.Enum):
    NOTHING = "nothing"  # not there, or a connection without state of a user who stays
    STATE = "state"  # the user stays; this connection's state goes (presence:state null)
    USER = "user"  # the user's last connection (announced as left)


class PresentUser:
    __slots__ = ("connections", "states", "user_id", "username")

    def __init__(self, user_id: uuid.UUID, username: str) -> None:
        self.user_id = str(user_id)
        self.username = username
        self.connections: set[str] = set()
        # sid -> latest state (cursor, selection, status), for the connections that set
        # one: a join lists these, not every connection (that made joins cost O(N^2)).
        self.states: dict[str, dict[str, Any]] = {}

    def encode(self) -> bytes:
        """This user's entry in a join's ``presence``."""
        return orjson.dumps(
            {
                "user_id": self.user_id,
                "username": self.username,
                "connection_count": len(self.connections),
                "connections": [
                    {"connection_id": sid, "state": state} for sid, state in self.states.items()
                ],
            }
        )


class _Room:
    """A room's users, and their entries for a join's ``presence`` as last encoded."""

    __slots__ = ("encoded", "order", "stale", "users")

    def __init__(self) -> None:
        self.users: dict[uuid.UUID, PresentUser] = {}
        self.encoded: dict[uuid.UUID, bytes] = {}  # by user, in the order they arrived
        self.order: list[uuid.UUID] = []  # the users sorted by_id: a page is a slice
        self.stale: set[uuid.UUID] = set()  # changed since encoded (or never encoded)


class Presence:
    def __init__(self) -> None:
        self._rooms: dict[uuid.UUID, _Room] = {}

    async def join(
        self, document_id: uuid.UUID, user_id: uuid.UUID, username: str, sid: str
    ) -> bool:
        """Add a connection; True when it is the user's first in this room."""
        room = self._rooms.get(document_id)
        if room is None:
            room = self._rooms[document_id] = _Room()
        user = room.users.get(user_id)
        first = user is None
        if user is None:
            user = room.users[user_id] = PresentUser(user_id, username)
            room.encoded[user_id] = b""  # its place: entries in the order users arrived
            bisect.insort(room.order, user_id, key=by_id)
        user.connections.add(sid)
        room.stale.add(user_id)
        return first

    async def leave(self, document_id: uuid.UUID, user_id: uuid.UUID, sid: str) -> Departure:
        """Remove a connection and its state; what the room should hear of it."""
        room = self._rooms.get(document_id)
        user = room.users.get(user_id) if room is not None else None
        if room is None or user is None or sid not in user.connections:
            return Departure.NOTHING
        user.connections.discard(sid)
        had_state = user.states.pop(sid, None) is not None
        if user.connections:
            room.stale.add(user_id)
            # Nobody holds an entry for a connection that never set a state: its leaving
            # is news to no one (and a room emptying tab by tab costs N, not N²).
            return Departure.STATE if had_state else Departure.NOTHING
        del room.users[user_id]
        room.encoded.pop(user_id, None)
        room.stale.discard(user_id)
        del room.order[bisect.bisect_left(room.order, user_id.int, key=by_id)]
        if not room.users:
            del self._rooms[document_id]
        return Departure.USER

    async def set_state(
        self, document_id: uuid.UUID, user_id: uuid.UUID, sid: str, state: dict[str, Any]
    ) -> bool:
        room = self._rooms.get(document_id)
        user = room.users.get(user_id) if room is not None else None
        if room is None or user is None or sid not in user.connections:
            return False
        if state:
            user.states[sid] = state
        else:
            user.states.pop(sid, None)
        room.stale.add(user_id)
        return True

    async def page(
        self, document_id: uuid.UUID, after: uuid.UUID | None, limit: int
    ) -> PresencePage:
        """Who is here, ``limit`` users at most, those after ``after`` in the order of
        their ids, already encoded (an ack embeds it as it is): one entry per user, with
        the states set.

        Connections without a state are only counted: listing every connection in
        every join made N joins cost O(N^2) (measured: 122 s for 5,000 joins). A user's
        entry is encoded again only once it changed, not for every join. A join lists a
        page, not the whole room: 1,000 users joining one room received 47 MB of
        presence in their acks, and made the server write it.
        """
        entries, order = self.entries(document_id), self.order(document_id)
        start = 0 if after is None else bisect.bisect_right(order, after.int, key=by_id)
        listed = order[start : start + limit]
        return encode_page(listed, entries.__getitem__, len(order), start + limit < len(order))

    def entries(self, document_id: uuid.UUID) -> dict[uuid.UUID, bytes]:
        """Each present user's entry, encoded (in the order they arrived); not a copy."""
        room = self._rooms.get(document_id)
        if room is None:
            return {}
        if room.stale:
            users, encoded = room.users, room.encoded
            for user_id in room.stale:
                encoded[user_id] = users[user_id].encode()
            room.stale.clear()
        return room.encoded

    def order(self, document_id: uuid.UUID) -> list[uuid.UUID]:
        """The present users sorted ``by_id``; not a copy."""
        room = self._rooms.get(document_id)
        return room.order if room is not None else []

    def user(self, document_id: uuid.UUID, user_id: uuid.UUID) -> PresentUser | None:
        room = self._rooms.get(document_id)
        return room.users.get(user_id) if room is not None else None

    def documents(self) -> list[uuid.UUID]:
        """The rooms someone is present in."""
        return list(self._rooms)

    # --- what a presence shared between nodes changes (realtime/cluster/presence.py) --

    def announcer(self, publish: Publish) -> Publish:
        """What ``PresenceChanges`` hands a room's changes to: here, ``publish`` itself
        (this process is the whole room)."""
        return publish

    async def settled(self, document_id: uuid.UUID) -> None:
        """Returns once the room's changes handed to the announcer went out (at once
        here)."""


class _Pending:
    """A room's arrivals and departures not announced yet, and its timer."""

    __slots__ = ("joined", "left", "timer")

    def __init__(self) -> None:
        self.left: dict[uuid.UUID, None] = {}  # an ordered set
        self.joined: dict[uuid.UUID, str] = {}
        self.timer: asyncio.TimerHandle | asyncio.Handle | None = None


class PresenceChanges:
    """Arrivals and departures, announced a room at a time.

    A room's changes go out through ``publish`` at most once every ``interval``
    seconds: the first after a quiet interval at the end of the event loop's turn that
    made it, later ones when the interval since the one before has passed (``0``:
    each turn's changes at its end). A user who left during the interval is in
    ``left``, one present at its end who arrived during it in ``joined``, both when
    they left and came back: applied in that order (left, then joined), they bring
    whoever held the room as it was, or a join ack taken during the interval, to the
    room as it is.

    Events about a user that go out at once (their ``presence:state``, ``typing``)
    must not overtake that user's arrival or departure: ``settle`` announces the
    room's waiting changes first when they include the user.

    A room of more than ``per_users`` users (``users`` counts them) waits longer, in
    proportion, ``longest`` seconds at most: an event costs a delivery to each member,
    so a room's arrivals and departures cost it about as many deliveries a second
    whatever its size (1,000 users joining one room: 7,520 events at 0.05 s, 3,131 at
    the 0.5 s a room of 1,000 waits; docs/benchmarks.md, "Joins").
    """

    def __init__(
        self,
        *,
        interval: float,
        publish: Publish,
        users: Callable[[uuid.UUID], int] = lambda document_id: 0,
        per_users: int = 100,
        longest: float = 1.0,
    ) -> None:
        self._interval = interval
        self._publish = publish
        self._users = users
        self._per_users = per_users
        self._longest = max(longest, interval)
        self._rooms: dict[uuid.UUID, _Pending] = {}

    def interval(self, document_id: uuid.UUID) -> float:
        """How long the room's changes wait after its previous event."""
        crowd = self._users(document_id) / self._per_users
        return min(self._longest, self._interval * max(1.0, crowd))

    def joined(self, document_id: uuid.UUID, user_id: uuid.UUID, username: str) -> None:
        """The user's first connection entered the room."""
        self._pending(document_id).joined[user_id] = username

    def left(self, document_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """The user's last connection left the room."""
        pending = self._pending(document_id)
        pending.joined.pop(user_id, None)
        # Kept even when they arrived within the interval: a join ack taken meanwhile
        # listed them.
        pending.left[user_id] = None

    def settle(self, document_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """Announce the room's waiting changes now if the user is among them (before
        an event about that user that goes out at once)."""
        pending = self._rooms.get(document_id)
        if pending is not None and (user_id in pending.joined or user_id in pending.left):
            self._announce(document_id, pending)

    def close(self) -> None:
        for pending in self._rooms.values():
            if pending.timer is not None:
                pending.timer.cancel()
        self._rooms.clear()

    def _pending(self, document_id: uuid.UUID) -> _Pending:
        pending = self._rooms.get(document_id)
        if pending is None:
            # The first change after a quiet interval: out at the end of this turn.
            pending = self._rooms[document_id] = _Pending()
            pending.timer = asyncio.get_running_loop().call_soon(self._due, document_id)
        return pending

    def _due(self, document_id: uuid.UUID) -> None:
        pending = self._rooms[document_id]
        pending.timer = None
        if not (pending.left or pending.joined) or self._interval <= 0:
            del self._rooms[document_id]
        else:
            # Kept for the interval: changes within it wait for its end.
            pending.timer = asyncio.get_running_loop().call_later(
                self.interval(document_id), self._due, document_id
            )
        if pending.left or pending.joined:
            self._announce(document_id, pending)

    def _announce(self, document_id: uuid.UUID, pending: _Pending) -> None:
        left, joined = list(pending.left), pending.joined
        pending.left, pending.joined = {}, {}
        self._publish(document_id, left, joined)
