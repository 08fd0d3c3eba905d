"""Room membership: the one record of which connections hear a room.

A member is an ``Endpoint``, one Socket.IO connection to one namespace. The record is
kept in both directions, so a fan-out reads a room's members and a disconnect leaves
the rooms of that connection only (its cost does not grow with the server's rooms).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from realtime.delivery.outbox import Outbox

Room = Hashable
AckCallback = Callable[..., Any]


class Endpoint:
    """One Socket.IO connection (a namespace on an Engine.IO connection)."""

    __slots__ = ("_acks", "_next_ack", "namespace", "outbox", "rooms", "sid")

    def __init__(self, sid: str, namespace: str, outbox: Outbox) -> None:
        self.sid = sid
        self.namespace = namespace
        self.outbox = outbox  # shared by every namespace of the Engine.IO connection
        self.rooms: set[Room] = set()
        self._acks: dict[int, AckCallback] | None = None
        self._next_ack = 0

    def expect_ack(self, callback: AckCallback) -> int:
        """An id for an event whose answer goes to ``callback``."""
        if self._acks is None:
            self._acks = {}
        self._next_ack += 1
        self._acks[self._next_ack] = callback
        return self._next_ack

    def take_ack(self, ack_id: int) -> AckCallback | None:
        return self._acks.pop(ack_id, None) if self._acks else None

    def __repr__(self) -> str:
        return f"Endpoint({self.sid!r}, {self.namespace!r})"


class Rooms:
    def __init__(self) -> None:
        self._members: dict[Room, dict[str, Endpoint]] = {}

    def join(self, room: Room, endpoint: Endpoint) -> bool:
        """Add ``endpoint``; False if it was already in."""
        members = self._members.get(room)
        if members is None:
            members = self._members[room] = {}
        elif endpoint.sid in members:
            return False
        members[endpoint.sid] = endpoint
        endpoint.rooms.add(room)
        return True

    def leave(self, room: Room, endpoint: Endpoint) -> bool:
        """Remove ``endpoint``; False if it was not in."""
        members = self._members.get(room)
        if members is None or members.pop(endpoint.sid, None) is None:
            return False
        endpoint.rooms.discard(room)
        if not members:
            del self._members[room]
        return True

    def leave_all(self, endpoint: Endpoint) -> list[Room]:
        """Take ``endpoint`` out of every room it is in; returns those rooms."""
        left = list(endpoint.rooms)
        for room in left:
            self.leave(room, endpoint)
        return left

    def members(self, room: Room) -> dict[str, Endpoint]:
        """The room's members by sid (read it, do not change it)."""
        return self._members.get(room) or {}

    def __contains__(self, room: Room) -> bool:
        return room in self._members

    def __len__(self) -> int:
        return len(self._members)
