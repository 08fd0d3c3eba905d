"""``Resync``: after a Redis outage, the rooms' members are brought up to date.

While a node's link to Redis is down, the events it publishes are lost to the other
nodes, and the events the others publish never reach it. When the link comes back
(``RedisLink``'s ``on_resumed``, with the rooms it watched), this node:

1. waits until shared presence answers again and has recorded this node afresh, so
   that what it reads of the other nodes is what they hold, and what they read of
   this one is what it holds;
2. brings each of its rooms up to date, a few rooms at a time: chat's missed
   messages are read from the database and passed on in ``seq`` order (ChatStitch),
   then the room's members get ``room:resync`` with the room's presence read afresh
   (a page, as a join ack has it) and the last ``seq`` they now hold (cursor states
   and typing that changed meanwhile were lost with the events), and the documents
   open here catch up with the log and ask their Yjs clients for ``sync-step-1``
   (``documents``, when given);
3. asks the other nodes to do the same for those rooms (``RESYNC`` on the control
   channel): their members missed what this node published while it was away.

A node that hears ``RESYNC`` does step 2 for the rooms it has members in. Doing it
twice is harmless: every step reads the current state and replaces the client's copy.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from app.events import EventClass
from app.wire import ServerEvent
from realtime.cluster import documents as document_log
from realtime.cluster.chat import ChatStitch
from realtime.cluster.link import RedisLink
from realtime.cluster.presence import SharedPresence
from realtime.delivery import Delivery, Event
from realtime.delivery.rooms import Room
from realtime.state import room_of

log = logging.getLogger(__name__)

RESYNC = "resync"
# Rooms brought up to date at once (each is a database read and a Redis read).
CONCURRENT_ROOMS = 8
# Document ids per RESYNC message on the control channel.
ROOMS_PER_MESSAGE = 500
# How long step 1 waits for shared presence; past it the rooms are resynced without
# the others' entries being trusted (the next outage's end resyncs them again).
PRESENCE_WAIT = 10.0

Documents = Callable[[list[uuid.UUID]], Awaitable[None]]


class Resync:
    def __init__(
        self,
        link: RedisLink,
        delivery: Delivery,
        chat: ChatStitch,
        presence: SharedPresence,
        documents: Documents | None = None,
        *,
        page_size: int,
    ) -> None:
        """``page_size``: users in a ``room:resync``'s presence (``PRESENCE_PAGE_SIZE``)."""
        self._link = link
        self._delivery = delivery
        self._chat = chat
        self._presence = presence
        self._documents = documents
        self._page_size = page_size
        self._tasks: set[asyncio.Task[None]] = set()
        link.handle(RESYNC, self.asked)

    def use_documents(self, documents: Documents) -> None:
        """Step 2's documents (the live documents', made once the database is open):
        called with the ids of the rooms resynced; those not open here are skipped."""
        self._documents = documents

    def resumed(self, rooms: list[Room]) -> None:
        """``RedisLink``'s ``on_resumed``: this node's link was down."""
        documents = _documents_of(rooms)
        self._spawn(self._after_outage(documents))

    def asked(self, args: list[str | None]) -> None:
        """Another node was away: the rooms it named that have members here."""
        documents = []
        for arg in args:
            try:
                documents.append(uuid.UUID(arg))
            except (TypeError, ValueError):
                log.warning("cluster: a resync of %r, not a document id", arg)
        self._spawn(self._bring_up_to_date(documents))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _after_outage(self, documents: list[uuid.UUID]) -> None:
        if not await self._presence.recorded(PRESENCE_WAIT):
            log.warning("cluster: presence not recorded again; resyncing rooms anyway")
        await self._bring_up_to_date(documents)
        for start in range(0, len(documents), ROOMS_PER_MESSAGE):
            chunk = documents[start : start + ROOMS_PER_MESSAGE]
            self._link.announce(RESYNC, *(str(document_id) for document_id in chunk))

    async def _bring_up_to_date(self, documents: list[uuid.UUID]) -> None:
        rooms = self._delivery.rooms
        present = [d for d in documents if rooms.members(room_of(d))]
        if self._documents is not None and documents:
            try:
                await self._documents(documents)
            except Exception:
                log.exception("cluster: documents not resynced after an outage")
        limit = asyncio.Semaphore(CONCURRENT_ROOMS)

        async def one(document_id: uuid.UUID) -> None:
            async with limit:
                try:
                    await self._room(document_id)
                except Exception:
                    log.exception("cluster: room %s not resynced after an outage", document_id)

        await asyncio.gather(*(one(document_id) for document_id in present))

    async def _room(self, document_id: uuid.UUID) -> None:
        last_seq = await self._chat.caught_up(document_id)
        if last_seq is None:
            return  # nobody here any more
        # A page, as a join ack lists it: the whole room to each of its members made a
        # resync of a room of N cost N² entries.
        page = await self._presence.full_state(document_id, self._page_size)
        data = {
            "document_id": str(document_id),
            "last_seq": last_seq,
            "presence": page.entries,
            "presence_count": page.count,
            "presence_more": page.more,
        }
        event = Event(ServerEvent.ROOM_RESYNC, data, EventClass.CONTROL)
        self._delivery.to_local_room(room_of(document_id), event)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _documents_of(rooms: list[Room]) -> list[uuid.UUID]:
    """The documents of the rooms (chat's, Yjs' and the live documents' updates: a
    document open here for REST or the assistant alone), each once, in order."""
    documents: dict[uuid.UUID, None] = {}
    for room in rooms:
        if isinstance(room, tuple) and room[0] in ("doc", "yjs", document_log.ROOM_KIND):
            documents[room[1]] = None
    return list(documents)
