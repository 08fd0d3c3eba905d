"""Chat across nodes: each node hands its members a room's messages in ``seq`` order,
every one once, and splits a join's catch-up from its live messages at one ``seq``.

Messages stored by every node's writer reach a node in two ways that keep no order
between them: its own writer's announcements, and the other nodes' through Redis (each
node publishes in its own order; two nodes' publications interleave as they may). So a
node keeps, per room with members here, the last ``seq`` it delivered (``delivered``):

- a message at or below it is a copy (dropped); the next one is delivered at once,
  then those waiting after it; one past a gap waits while the gap is filled.
- Seqs are gapless and taken under the document's counter row lock, so documents'
  messages commit in ``seq`` order, and a message is announced (locally, or on Redis)
  only after its commit: when ``n`` arrives, every seq below it is readable. A gap is
  given ``GAP_GRACE`` for the missing messages to arrive from Redis, then read from
  the database (and after a Redis outage, ``caught_up`` reads what was lost: resync.py).
- A join (:meth:`ChatStitch.enter`): the room's channel subscribed and confirmed by
  Redis first (every message committed after that is heard), then the stored last
  seq read; the node's members are brought up to it from the database if it is ahead
  of them; then, in one event-loop turn, the connection enters the room at
  ``delivered``. Its catch-up is read from the database up to that seq; everything
  after it reaches it live, in order. Nothing is in both or neither.

Edits and deletions (``chat:edited``, ``chat:deleted``) are not stitched: they pass
as any room event, and an edit may overtake the message it edits on another node.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from app.events import EventClass
from app.wire import ServerEvent
from realtime.cluster.link import RedisLink
from realtime.delivery import Delivery, Event
from realtime.delivery.rooms import Room
from realtime.state import room_of

log = logging.getLogger(__name__)

# Stored messages (dumped) with ``after < seq <= up_to``, oldest first.
ReadAfter = Callable[[uuid.UUID, int, int], Awaitable[list[dict[str, Any]]]]
LastStored = Callable[[uuid.UUID], Awaitable[int]]

# How long a gap waits for its messages from Redis before they are read.
GAP_GRACE = 0.05
# Rooms remembered before those with nobody here left are forgotten (then twice as
# many as remain).
SWEEP_AT = 1_000
# How long a join waits for Redis to confirm a subscription; past it (Redis away) it
# enters at what the database holds, and gaps heal when Redis is back.
SUBSCRIBE_TIMEOUT = 2.0


class _Room:
    __slots__ = ("delivered", "filling", "waiting")

    def __init__(self, delivered: int) -> None:
        self.delivered = delivered
        self.waiting: dict[int, tuple[Event, str | None]] = {}
        self.filling: asyncio.Task[None] | None = None


class ChatStitch:
    """The chat order of this node's rooms (``ChatOrder`` of app/services/chat.py)."""

    def __init__(self, link: RedisLink, delivery: Delivery) -> None:
        self._link = link
        self._delivery = delivery
        self._rooms: dict[uuid.UUID, _Room] = {}
        self._joining: Counter[uuid.UUID] = Counter()
        self._read: ReadAfter | None = None
        self._last_stored: LastStored | None = None
        self._sweep_at = SWEEP_AT

    def use(self, read_after: ReadAfter, last_stored: LastStored) -> None:
        """The database reads (the chat service's, made once the engine is open)."""
        self._read, self._last_stored = read_after, last_stored

    # --- ChatOrder ----------------------------------------------------------------------

    async def enter(self, document_id: uuid.UUID, enter: Callable[[], None]) -> int:
        room = room_of(document_id)
        if not self._joining[document_id] and not self._delivery.rooms.members(room):
            # Nobody here: what is heard until the split is known waits for it.
            self._rooms[document_id] = _Room(-1)
        self._joining[document_id] += 1
        try:
            while True:
                confirmed = self._link.subscribed_now(room)
                if not confirmed:
                    try:
                        await asyncio.wait_for(self._link.subscribed(room), SUBSCRIBE_TIMEOUT)
                        confirmed = True
                    except TimeoutError:
                        log.warning("cluster: no subscription to %s; joining on stored chat", room)
                state = self._rooms.get(document_id)
                if state is None or state.delivered < 0 or not self._delivery.rooms.members(room):
                    # New here: what is stored is where the room's live messages begin.
                    # (With members here every later message reaches this node: the
                    # split is what they were given.)
                    assert self._last_stored is not None
                    stored = await self._last_stored(document_id)
                    state = await self._catch_up(document_id, stored)
                # Unwatched meanwhile (its last member left) and watched again: what
                # was published in between was not heard, so once more.
                if not confirmed or self._link.subscribed_now(room):
                    enter()
                    split = state.delivered
                    self._drain(document_id, state)  # what waited past the split: live now
                    self._sweep()
                    return split
        finally:
            self._joining[document_id] -= 1
            if not self._joining[document_id]:
                del self._joining[document_id]
                if not self._delivery.rooms.members(room):  # the join failed: no one here
                    self._rooms.pop(document_id, None)
                    self._link.unwatch(room)

    def _sweep(self) -> None:
        """Forget the rooms that nobody here is in or joining (now and then)."""
        if len(self._rooms) < self._sweep_at:
            return
        members = self._delivery.rooms.members
        for document_id in [
            d for d in self._rooms if not members(room_of(d)) and not self._joining[d]
        ]:
            del self._rooms[document_id]
        self._sweep_at = max(SWEEP_AT, 2 * len(self._rooms))

    def announce(
        self, document_id: uuid.UUID, seq: int, data: dict[str, Any], skip: str | None
    ) -> None:
        """A message this node's writer stored: to the other nodes at once, to this
        node's members in seq order."""
        event = Event(ServerEvent.CHAT_MESSAGE, data, EventClass.CHAT)
        self._link.publish(room_of(document_id), event)
        self._arrive(document_id, seq, event, skip)

    # --- from Redis -----------------------------------------------------------------------

    def heard(self, room: Room, event: Event) -> None:
        """``RedisLink``'s ``deliver``: chat messages by seq, every other event as is."""
        if event.name == ServerEvent.CHAT_MESSAGE and isinstance(room, tuple) and room[0] == "doc":
            try:
                seq = int(event.data["message"]["seq"])
            except (KeyError, TypeError, ValueError):
                log.warning("cluster: a chat message without a seq in %s", room)
                return
            self._arrive(room[1], seq, event, None)
        else:
            self._delivery.to_local_room(room, event)

    async def caught_up(self, document_id: uuid.UUID) -> int | None:
        """After events may have been lost between nodes (a Redis outage): this node's
        members of the room are given what is stored and they lack; returns the last
        ``seq`` they hold now (None: nobody here)."""
        if document_id not in self._rooms:
            return None
        assert self._last_stored is not None
        stored = await self._last_stored(document_id)
        if document_id not in self._rooms:
            return None
        return (await self._catch_up(document_id, stored)).delivered

    # --- in seq order -------------------------------------------------------------------

    def _arrive(self, document_id: uuid.UUID, seq: int, event: Event, skip: str | None) -> None:
        room = room_of(document_id)
        state = self._rooms.get(document_id)
        if state is None:
            return  # nobody here
        present = bool(self._delivery.rooms.members(room))
        if not present and not self._joining[document_id]:
            del self._rooms[document_id]  # nobody here any more: a join starts afresh
            return
        if seq <= state.delivered:
            return  # a copy: read from the database, or heard again
        state.waiting[seq] = (event, skip)
        if present:
            self._drain(document_id, state)

    def _drain(self, document_id: uuid.UUID, state: _Room) -> None:
        """Deliver what follows ``delivered`` without a gap; read a gap's messages."""
        room = room_of(document_id)
        while (following := state.waiting.pop(state.delivered + 1, None)) is not None:
            self._deliver(room, state, state.delivered + 1, *following)
        if state.waiting and state.filling is None:
            state.filling = asyncio.get_running_loop().create_task(self._fill(document_id, state))

    def _deliver(self, room: Room, state: _Room, seq: int, event: Event, skip: str | None) -> None:
        state.delivered = seq
        self._delivery.to_local_room(room, event, skip=skip)

    async def _fill(self, document_id: uuid.UUID, state: _Room) -> None:
        """Read a gap's messages once they had ``GAP_GRACE`` to arrive."""
        try:
            await asyncio.sleep(GAP_GRACE)
            while state.waiting and self._rooms.get(document_id) is state:
                for seq in [seq for seq in state.waiting if seq <= state.delivered]:
                    del state.waiting[seq]
                if not state.waiting:
                    break
                await self._read_up_to(document_id, state, min(state.waiting) - 1)
        except Exception:
            log.exception("cluster: a chat gap in %s was not read", document_id)
        finally:
            state.filling = None

    async def _catch_up(self, document_id: uuid.UUID, stored: int) -> _Room:
        """Bring this node's members up to ``stored`` (a join's split point)."""
        state = self._rooms.setdefault(document_id, _Room(-1))
        if self._delivery.rooms.members(room_of(document_id)):
            await self._read_up_to(document_id, state, stored)
        else:  # nobody to deliver to: what waits up to it is in the joins' catch-up
            state.delivered = max(state.delivered, stored)
            for seq in [seq for seq in state.waiting if seq <= state.delivered]:
                del state.waiting[seq]
        return state

    async def _read_up_to(self, document_id: uuid.UUID, state: _Room, up_to: int) -> None:
        assert self._read is not None
        while state.delivered < up_to and self._rooms.get(document_id) is state:
            if not self._delivery.rooms.members(room_of(document_id)):
                await self._catch_up(document_id, up_to)  # they left: nothing to read
                return
            before = state.delivered
            for message in await self._read(document_id, before, up_to):
                data = {"document_id": str(document_id), "message": message}
                event = Event(ServerEvent.CHAT_MESSAGE, data, EventClass.CHAT)
                self._arrive(document_id, int(message["seq"]), event, None)
            if state.delivered == before:
                # Not stored (cannot be: seqs are gapless and committed in order);
                # skipped, so that the room does not stop for it.
                log.error("cluster: chat %s has no message %d", document_id, before + 1)
                state.delivered = before + 1
                self._drain(document_id, state)
