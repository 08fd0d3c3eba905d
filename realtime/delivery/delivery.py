"""``Delivery``: the one way out for every event the server sends a client.

A target (a room, one connection), an ``Event`` (name, payload, class, key), and
that is all: the event is encoded once per namespace and handed to each recipient's
``Outbox`` in the same call, with no task and no await per recipient. Handing over is
synchronous, so callers may do it under the lock that orders their events; each
connection receives events in the order they were handed over (but for the
superseding of waiting state, outbox.py).

With a ``Relay`` (realtime/cluster/, when Redis is configured) a room's events also go
to the room's members on the other nodes, and the relay is told when a room gains its
first member here and loses its last, so that it hears only the rooms this node serves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from realtime.delivery.encoding import Encoded, encode_event
from realtime.delivery.events import Event
from realtime.delivery.rooms import AckCallback, Endpoint, Room, Rooms


class Relay(Protocol):
    """Carries room events to the other nodes (realtime/cluster/)."""

    def publish(self, room: Room, event: Event) -> None:
        """Hand ``event`` to every other node that has members in ``room``."""

    def watch(self, room: Room) -> None:
        """``room`` has members on this node now: hear its events from the others."""

    def unwatch(self, room: Room) -> None:
        """``room`` has no member left on this node."""


class Delivery:
    def __init__(self, relay: Relay | None = None) -> None:
        self.rooms = Rooms()
        self._endpoints: dict[str, Endpoint] = {}
        self._relay = relay
        # Told of each room event from another node before its members here get it
        # (shared presence keeps its copy of the other nodes' presence fresh by it).
        self.on_remote: Callable[[Room, Event], None] | None = None

    # --- connections ------------------------------------------------------------------

    def add(self, endpoint: Endpoint) -> None:
        self._endpoints[endpoint.sid] = endpoint

    def remove(self, sid: str) -> Endpoint | None:
        """Forget a connection and take it out of its rooms (and only those)."""
        endpoint = self._endpoints.pop(sid, None)
        if endpoint is not None:
            for room in self.rooms.leave_all(endpoint):
                self._left(room)
        return endpoint

    def endpoint(self, sid: str) -> Endpoint | None:
        return self._endpoints.get(sid)

    def buffered(self) -> Iterator[int]:
        """Each Engine.IO connection's backlog in bytes (for the metrics)."""
        seen: set[int] = set()
        for endpoint in self._endpoints.values():
            if id(endpoint.outbox) not in seen:
                seen.add(id(endpoint.outbox))
                yield endpoint.outbox.buffered_bytes

    # --- membership -------------------------------------------------------------------

    def join(self, room: Room, sid: str) -> bool:
        endpoint = self._endpoints.get(sid)
        if endpoint is None or not self.rooms.join(room, endpoint):
            return False
        if self._relay is not None and len(self.rooms.members(room)) == 1:
            self._relay.watch(room)
        return True

    def leave(self, room: Room, sid: str) -> bool:
        endpoint = self._endpoints.get(sid)
        if endpoint is None or not self.rooms.leave(room, endpoint):
            return False
        self._left(room)
        return True

    def _left(self, room: Room) -> None:
        if self._relay is not None and room not in self.rooms:
            self._relay.unwatch(room)

    def in_room(self, room: Room, sid: str) -> bool:
        return sid in self.rooms.members(room)

    def members(self, room: Room) -> list[str]:
        return list(self.rooms.members(room))

    # --- sending ----------------------------------------------------------------------

    def to_room(self, room: Room, event: Event, *, skip: str | None = None) -> int:
        """Send ``event`` to every member of ``room`` but ``skip``, on this node and
        every other; returns how many here."""
        sent = self._to_members(room, event, skip)
        if self._relay is not None:
            self._relay.publish(room, event)
        return sent

    def to_local_room(self, room: Room, event: Event, *, skip: str | None = None) -> int:
        """``to_room`` on this node only (what the relay does with the others' events)."""
        if self.on_remote is not None:
            self.on_remote(room, event)
        return self._to_members(room, event, skip)

    def _to_members(self, room: Room, event: Event, skip: str | None) -> int:
        members = self.rooms.members(room)
        if not members:
            return 0
        skipped = members.get(skip) if skip is not None else None
        namespace = None
        encoded: Encoded | None = None
        frames = b""
        deflated: bytes | None = None  # compressed once, for the connections that asked
        sent = 0
        # A copy: a connection that overflows is closed, which changes membership.
        for endpoint in tuple(members.values()):
            if endpoint is skipped:
                continue
            if endpoint.namespace != namespace:
                namespace = endpoint.namespace
                encoded = event.encoded(namespace)
                frames = encoded.frames
                deflated = None
            outbox = endpoint.outbox
            if outbox.direct:
                if outbox.deflate:
                    assert encoded is not None
                    deflated = deflated or encoded.deflated()
                    outbox.write(deflated)
                else:
                    outbox.write(frames)
            elif not outbox.closed:
                assert encoded is not None and namespace is not None
                outbox.enqueue(encoded, event, namespace)
            sent += 1
        return sent

    def to_connection(self, sid: str, event: Event, *, callback: AckCallback | None = None) -> bool:
        """Send ``event`` to one connection; ``callback`` receives the client's answer.
        False if the connection is gone."""
        endpoint = self._endpoints.get(sid)
        if endpoint is None:
            return False
        if callback is None:
            endpoint.outbox.push(event.encoded(endpoint.namespace), event, endpoint.namespace)
        else:
            # The ack id makes this encoding the connection's own.
            ack_id = endpoint.expect_ack(callback)
            encoded = encode_event(endpoint.namespace, event.name, event.data, ack_id)
            endpoint.outbox.push(encoded, event, endpoint.namespace)
        return True
