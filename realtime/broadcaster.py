"""The ``Broadcaster`` that services publish through, on ``Delivery``."""

from __future__ import annotations

import uuid
from collections.abc import Hashable
from typing import Any

from app.events import EventClass, RevokedBecause
from app.wire import ServerEvent
from realtime.delivery import Event
from realtime.namespaces.main import end_connection
from realtime.namespaces.rooms import leave_room
from realtime.namespaces.yjs import YjsEvent, end_yjs_connection
from realtime.state import Realtime, room_of, user_room_of, yjs_room_of
from realtime.yjs_connections import YjsConnection
from storage.models import DocumentRole

SESSION_REVOKED = "session_revoked"
REVOKED_MESSAGES: dict[RevokedBecause, str] = {
    "logout": "this session was signed out",
    "token_reused": "this session was revoked: its refresh token was used twice; sign in again",
}


class SocketBroadcaster:
    def __init__(self, rt: Realtime) -> None:
        self.rt = rt

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
        self.rt.delivery.to_room(
            room_of(document_id), Event(event, data, kind, key), skip=skip_connection
        )

    def document_updated(
        self, document_id: uuid.UUID, update: bytes, *, skip_connection: str | None = None
    ) -> None:
        # Updates waiting for a slow reader merge into one (pycrdt.merge_updates).
        event = Event(YjsEvent.SYNC_UPDATE, update, EventClass.DOCUMENT, key=document_id)
        self.rt.delivery.to_room(yjs_room_of(document_id), event, skip=skip_connection)

    async def membership_changed(
        self, document_id: uuid.UUID, user_id: uuid.UUID, role: DocumentRole | None
    ) -> None:
        for yjs in self._documents(document_id):
            if yjs.user_id != user_id:
                continue
            if role is None:
                await end_yjs_connection(self.rt, yjs, "removed", "you are no longer a member")
            else:
                yjs.role = role
        if role is None:
            for sid in self._in_room(document_id, user_id):
                await self._remove(sid, document_id, "removed")
            return
        data = {"document_id": str(document_id), "role": role.value}
        self.rt.delivery.to_room(
            user_room_of(user_id), Event(ServerEvent.ROOM_ROLE, data, EventClass.CONTROL)
        )

    async def document_deleted(self, document_id: uuid.UUID) -> None:
        for yjs in self._documents(document_id):
            await end_yjs_connection(self.rt, yjs, "deleted", "the document was deleted")
        for sid in self.rt.delivery.members(room_of(document_id)):
            await self._remove(sid, document_id, "deleted")

    async def user_disabled(self, user_id: uuid.UUID) -> None:
        for yjs in self.rt.yjs.of_user(user_id):
            await end_yjs_connection(self.rt, yjs, "user_disabled", "the account was disabled")
        for sid in self.rt.delivery.members(user_room_of(user_id)):
            await end_connection(self.rt, sid, "user_disabled", "the account was disabled")

    async def session_revoked(
        self, user_id: uuid.UUID, session_id: uuid.UUID, because: RevokedBecause
    ) -> None:
        # The user's other sessions (another device, a second sign-in) stay open.
        message = REVOKED_MESSAGES[because]
        for yjs in self.rt.yjs.of_user(user_id):
            if yjs.principal.session_id == session_id:
                await end_yjs_connection(self.rt, yjs, SESSION_REVOKED, message)
        for sid in self.rt.delivery.members(user_room_of(user_id)):
            connection = self.rt.connections.get(sid)
            # The session of the token it holds now (auth:refresh may replace it).
            if connection is not None and connection.principal.session_id == session_id:
                await end_connection(self.rt, sid, SESSION_REVOKED, message)

    def _documents(self, document_id: uuid.UUID) -> list[YjsConnection]:
        by_sid = self.rt.yjs.by_sid
        members = self.rt.delivery.members(yjs_room_of(document_id))
        return [by_sid[sid] for sid in members if sid in by_sid]

    def _in_room(self, document_id: uuid.UUID, user_id: uuid.UUID) -> list[str]:
        """The user's connections that joined the document's room."""
        delivery = self.rt.delivery
        return [
            sid
            for sid in delivery.members(user_room_of(user_id))
            if delivery.in_room(room_of(document_id), sid)
        ]

    async def _remove(self, sid: str, document_id: uuid.UUID, reason: str) -> None:
        connection = self.rt.connections.get(sid)
        if connection is None:
            return
        self.rt.to_connection(
            sid, ServerEvent.ROOM_REMOVED, {"document_id": str(document_id), "reason": reason}
        )
        await leave_room(self.rt, connection, document_id)
