"""The live connections of this process, by Socket.IO sid and by user."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from app.auth.principal import Principal
from storage.models import DocumentRole


@dataclass(eq=False)
class Connection:
    sid: str
    principal: Principal
    # The rooms this connection joined, with its role there (kept current by
    # membership pushes; services re-check the database on every write).
    rooms: dict[uuid.UUID, DocumentRole] = field(default_factory=dict)
    renewal: asyncio.TimerHandle | None = None

    @property
    def user_id(self) -> uuid.UUID:
        return self.principal.user_id

    def cancel_timers(self) -> None:
        if self.renewal is not None:
            self.renewal.cancel()
            self.renewal = None


class Connections:
    def __init__(self) -> None:
        self._by_sid: dict[str, Connection] = {}
        self._by_user: dict[uuid.UUID, set[str]] = {}

    def __len__(self) -> int:
        return len(self._by_sid)

    def add(self, connection: Connection) -> None:
        self._by_sid[connection.sid] = connection
        self._by_user.setdefault(connection.user_id, set()).add(connection.sid)

    def remove(self, sid: str) -> Connection | None:
        connection = self._by_sid.pop(sid, None)
        if connection is not None:
            sids = self._by_user.get(connection.user_id, set())
            sids.discard(sid)
            if not sids:
                self._by_user.pop(connection.user_id, None)
            connection.cancel_timers()
        return connection

    def all(self) -> list[Connection]:
        return list(self._by_sid.values())

    def get(self, sid: str) -> Connection | None:
        return self._by_sid.get(sid)

    def of_user(self, user_id: uuid.UUID) -> list[Connection]:
        return [self._by_sid[sid] for sid in self._by_user.get(user_id, ())]

    def in_room(self, document_id: uuid.UUID) -> list[Connection]:
        return [c for c in self._by_sid.values() if document_id in c.rooms]
