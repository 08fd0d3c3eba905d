"""The document connections (``/yjs|<id>`` namespaces) of this process."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from pycrdt import Awareness

from app.auth.principal import Principal
from app.buckets import TokenBucket
from app.services.live_documents import LiveDocument
from storage.models import DocumentRole


@dataclass(eq=False)
class YjsConnection:
    sid: str
    namespace: str
    principal: Principal
    role: DocumentRole
    # Its own rate limit buckets (CommandLimits.connection_buckets); only "yjs" is used.
    buckets: dict[str, TokenBucket]
    live: LiveDocument | None = None
    # Error codes already reported since the last accepted update.
    told: set[str] = field(default_factory=set)
    resync: asyncio.TimerHandle | None = None
    # Ends the connection once its access token has expired (plus the grace).
    expiry: asyncio.TimerHandle | None = None
    # Why it was ended while still connecting (code, message): its connect is refused so.
    ended: tuple[str, str] | None = None

    @property
    def user_id(self) -> uuid.UUID:
        return self.principal.user_id

    @property
    def document_id(self) -> uuid.UUID:
        assert self.live is not None
        return self.live.id


@dataclass(eq=False)
class YjsRoom:
    """The awareness of one document's connections in this process (who they are is
    delivery's room ``yjs_room_of``)."""

    awareness: Awareness
    # Awareness client id -> the connection that announced it first. Providers
    # re-send every state they receive, so "sent it" does not mean "owns it".
    owners: dict[int, str] = field(default_factory=dict)

    def owned_by(self, sid: str) -> list[int]:
        return [client_id for client_id, owner in self.owners.items() if owner == sid]


class YjsConnections:
    def __init__(self) -> None:
        self.by_sid: dict[str, YjsConnection] = {}
        self.rooms: dict[uuid.UUID, YjsRoom] = {}

    def of_user(self, user_id: uuid.UUID) -> list[YjsConnection]:
        return [c for c in self.by_sid.values() if c.user_id == user_id]
