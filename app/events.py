"""How services announce what happened, without knowing about Socket.IO.

``realtime`` implements ``Broadcaster``; services receive it at construction and
call it after their transaction commits. ``NullBroadcaster`` serves processes
without live connections (the command line).
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from storage.models import DocumentRole


class Broadcaster(Protocol):
    async def to_room(
        self,
        document_id: uuid.UUID,
        event: str,
        data: dict[str, Any],
        *,
        skip_connection: str | None = None,
    ) -> None:
        """Deliver ``event`` to every connection that joined the document's room."""

    async def document_updated(
        self, document_id: uuid.UUID, update: bytes, *, skip_connection: str | None = None
    ) -> None:
        """Deliver a stored Yjs update to every open copy of the document."""

    async def membership_changed(
        self, document_id: uuid.UUID, user_id: uuid.UUID, role: DocumentRole | None
    ) -> None:
        """A member's role changed, or (``role=None``) they lost access."""

    async def document_deleted(self, document_id: uuid.UUID) -> None:
        """Everyone in the room loses access at once."""

    async def user_disabled(self, user_id: uuid.UUID) -> None:
        """End every connection of the user."""


class NullBroadcaster:
    async def to_room(
        self,
        document_id: uuid.UUID,
        event: str,
        data: dict[str, Any],
        *,
        skip_connection: str | None = None,
    ) -> None:
        return None

    async def document_updated(
        self, document_id: uuid.UUID, update: bytes, *, skip_connection: str | None = None
    ) -> None:
        return None

    async def membership_changed(
        self, document_id: uuid.UUID, user_id: uuid.UUID, role: DocumentRole | None
    ) -> None:
        return None

    async def document_deleted(self, document_id: uuid.UUID) -> None:
        return None

    async def user_disabled(self, user_id: uuid.UUID) -> None:
        return None
