"""How services announce what happened, without knowing about Socket.IO.

``realtime`` implements ``Broadcaster``; services receive it at construction and
call it after their transaction commits. Handing an event over is synchronous: the
broadcaster queues it for every recipient and returns, so a service may do it while
it holds a lock that orders its events (chat's room lock) without waiting for any
network. ``NullBroadcaster`` serves processes without live connections (the
command line).

Every event says what kind it is (``EventClass``): that decides what happens to it
for a connection that falls behind (docs/protocol.md §5.10).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Hashable
from typing import Any, Literal, Protocol

from storage.models import DocumentRole


class EventClass(enum.StrEnum):
    """What an event is to a connection that cannot keep up with its room.

    ``CONTROL`` and ``CHAT`` are never dropped: a connection too far behind for them
    is closed (``slow_consumer``) and catches up when it comes back. The others are
    state whose latest value is all a late reader needs: a newer event with the same
    key replaces (``PRESENCE``, ``TYPING``) or merges with (``AI_CHUNK``, ``DOCUMENT``,
    ``AWARENESS``) one still waiting.
    """

    CONTROL = "control"  # acks, connection and session events, roles, removals, errors
    CHAT = "chat"  # chat messages, edits, deletions; an assistant reply's start and end
    PRESENCE = "presence"  # who is here and their state: latest per user or connection
    TYPING = "typing"  # latest per user
    AI_CHUNK = "ai_chunk"  # chunks of one assistant reply: joined into one
    DOCUMENT = "document"  # Yjs updates of one document: merged into one
    AWARENESS = "awareness"  # Yjs awareness of one document: latest per client id


# Why a sign-in session was revoked: its holder signed out, or a spent refresh token
# of it was presented again (it leaked).
RevokedBecause = Literal["logout", "token_reused"]


class Broadcaster(Protocol):
    def to_room(
        self,
        document_id: uuid.UUID,
        event: str,
        data: dict[str, Any],
        *,
        kind: EventClass,
        key: Hashable = None,
        skip_connection: str | None = None,
    ) -> None:
        """Deliver ``event`` to every connection that joined the document's room.

        ``key`` says which earlier event of a replaceable or mergeable ``kind`` this
        one supersedes (a reply id for ``AI_CHUNK``, a user id for ``TYPING``...).
        """

    def document_updated(
        self, document_id: uuid.UUID, update: bytes, *, skip_connection: str | None = None
    ) -> None:
        """Deliver a stored Yjs update to every open copy of the document."""

    def document_resync(self, document_id: uuid.UUID) -> None:
        """Ask this process's open copies of the document for what they hold that the
        server may lack (y-socket.io ``sync-step-1``): after a Redis outage."""

    async def membership_changed(
        self, document_id: uuid.UUID, user_id: uuid.UUID, role: DocumentRole | None
    ) -> None:
        """A member's role changed, or (``role=None``) they lost access."""

    async def document_deleted(self, document_id: uuid.UUID) -> None:
        """Everyone in the room loses access at once."""

    async def user_disabled(self, user_id: uuid.UUID) -> None:
        """End every connection of the user."""

    async def session_revoked(
        self, user_id: uuid.UUID, session_id: uuid.UUID, because: RevokedBecause
    ) -> None:
        """End every connection opened with an access token of the sign-in session."""


class NullBroadcaster:
    def to_room(
        self,
        document_id: uuid.UUID,
        event: str,
        data: dict[str, Any],
        *,
        kind: EventClass,
        key: Hashable = None,
        skip_connection: str | None = None,
    ) -> None:
        return None

    def document_updated(
        self, document_id: uuid.UUID, update: bytes, *, skip_connection: str | None = None
    ) -> None:
        return None

    def document_resync(self, document_id: uuid.UUID) -> None:
        return None

    async def membership_changed(
        self, document_id: uuid.UUID, user_id: uuid.UUID, role: DocumentRole | None
    ) -> None:
        return None

    async def document_deleted(self, document_id: uuid.UUID) -> None:
        return None

    async def user_disabled(self, user_id: uuid.UUID) -> None:
        return None

    async def session_revoked(
        self, user_id: uuid.UUID, session_id: uuid.UUID, because: RevokedBecause
    ) -> None:
        return None
