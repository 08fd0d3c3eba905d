"""What every handler of this process shares."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from app.config import Settings
from app.events import EventClass
from app.metrics import Metrics
from app.services.assistant import Assistant
from app.services.auth import AuthService
from app.services.chat import ChatService
from app.services.documents import DocumentService
from app.services.live_documents import LiveDocuments
from app.wire import ServerEvent
from realtime.admission import Admission
from realtime.cluster.presence import SharedPresence
from realtime.connections import Connection, Connections
from realtime.delivery import Delivery, Event
from realtime.presence import Presence, PresenceChanges
from realtime.ratelimit import CommandLimits
from realtime.server import RoomServer
from realtime.typing_indicators import TypingIndicators
from realtime.yjs_connections import YjsConnections

if TYPE_CHECKING:
    from realtime.cluster.replies import ClusterReplies

log = logging.getLogger(__name__)


def room_of(document_id: uuid.UUID) -> tuple[str, uuid.UUID]:
    """A document's room on the default namespace (chat, presence, the assistant)."""
    return ("doc", document_id)


def yjs_room_of(document_id: uuid.UUID) -> tuple[str, uuid.UUID]:
    """A document's connections on its ``/yjs|<id>`` namespace."""
    return ("yjs", document_id)


def user_room_of(user_id: uuid.UUID) -> tuple[str, uuid.UUID]:
    """Every default-namespace connection of a user."""
    return ("user", user_id)


@dataclass(eq=False)
class Realtime:
    sio: RoomServer
    delivery: Delivery
    settings: Settings
    metrics: Metrics
    limits: CommandLimits
    admission: Admission
    connections: Connections = field(default_factory=Connections)
    presence: Presence = field(default_factory=Presence)
    shared: SharedPresence | None = None  # presence over every node (with Redis)
    replies: ClusterReplies | None = None  # the assistant's over every node (with Redis)
    yjs: YjsConnections = field(default_factory=YjsConnections)
    typing: TypingIndicators = field(init=False)
    presence_changes: PresenceChanges = field(init=False)
    # The services the handlers call: made once the database is open, after this
    # (they broadcast through it), and handed in then (``use``).
    auth: AuthService = field(init=False)
    documents: DocumentService = field(init=False)
    chat: ChatService = field(init=False)
    assistant: Assistant = field(init=False)
    live_documents: LiveDocuments = field(init=False)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.typing = TypingIndicators(
            timeout=self.settings.typing_timeout_seconds,
            throttle=self.settings.typing_throttle_seconds,
            on_expired=self._typing_expired,
        )
        presence = self.presence
        self.presence_changes = PresenceChanges(
            interval=self.settings.presence_batch_seconds,
            publish=presence.announcer(self._presence_changed),
            # This process's users of the room (with Redis, a share of them).
            users=lambda document_id: len(presence.order(document_id)),
            per_users=self.settings.presence_page_size,
            longest=self.settings.presence_batch_max_seconds,
        )

    async def shared_presence(self, app: web.Application) -> AsyncIterator[None]:
        """The cleanup context of presence over every node (after the link's: it
        leaves the cluster before the link closes)."""
        assert self.shared is not None
        await self.shared.start()
        try:
            yield
        finally:
            await self.shared.close()

    async def settle(self, document_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """Before an event about the user that goes out at once: the room's waiting
        arrivals and departures, if they include the user, go out first."""
        self.presence_changes.settle(document_id, user_id)
        await self.presence.settled(document_id)

    def _typing_expired(self, document_id: uuid.UUID, user_id: uuid.UUID) -> None:
        data = {"document_id": str(document_id), "user_id": str(user_id), "typing": False}
        event = Event(ServerEvent.TYPING, data, EventClass.TYPING, key=user_id)
        self.delivery.to_room(room_of(document_id), event)

    def _presence_changed(
        self, document_id: uuid.UUID, left: list[uuid.UUID], joined: dict[uuid.UUID, str]
    ) -> None:
        # Kept in order for a reader that falls behind (no key): each one is a step
        # from the one before, and a room sends at most one an interval.
        data = {
            "document_id": str(document_id),
            "left": [str(user_id) for user_id in left],
            "joined": [
                {"user_id": str(user_id), "username": username}
                for user_id, username in joined.items()
            ],
        }
        event = Event(ServerEvent.PRESENCE_CHANGED, data, EventClass.PRESENCE)
        self.delivery.to_room(room_of(document_id), event)

    def use(
        self,
        *,
        auth: AuthService,
        documents: DocumentService,
        chat: ChatService,
        assistant: Assistant,
        live_documents: LiveDocuments,
    ) -> None:
        """The services, once made (before the server takes its first connection)."""
        self.auth, self.documents, self.chat = auth, documents, chat
        self.assistant, self.live_documents = assistant, live_documents

    def to_connection(self, sid: str, event: ServerEvent, data: dict[str, Any]) -> None:
        """A control event for one connection."""
        self.delivery.to_connection(sid, Event(event, data, EventClass.CONTROL))

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine from a timer callback; keep it referenced, log its failure."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def close(self) -> None:
        self.typing.close()
        self.presence_changes.close()
        for connection in self.connections.all():
            connection.cancel_timers()
        # Awaited, not only cancelled: none may still use the database once the
        # cleanup contexts close it.
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class Call:
    """One command from one connection."""

    rt: Realtime
    connection: Connection

    @property
    def sid(self) -> str:
        return self.connection.sid

    def admit(self, rate: str) -> None:
        self.rt.limits.admit(self.connection.buckets, self.connection.user_id, rate)
