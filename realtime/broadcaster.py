"""The ``Broadcaster`` that services publish through, on Socket.IO."""

from __future__ import annotations

import uuid
from typing import Any

from app.wire import ServerEvent
from realtime.namespaces.main import end_connection
from realtime.namespaces.rooms import leave_room
from realtime.namespaces.yjs import YjsEvent, end_yjs_connection, namespace_of
from realtime.state import Realtime, room_name
from storage.models import DocumentRole


class SocketBroadcaster:
    def __init__(self, rt: Realtime) -> None:
        self.rt = rt

    async def to_room(
        self,
        document_id: uuid.UUID,
        event: str,
        data: dict[str, Any],
        *,
        skip_connection: str | None = None,
    ) -> None:
        await self.rt.emit(event, data, to=room_name(document_id), skip_sid=skip_connection)

    async def document_updated(
        self, document_id: uuid.UUID, update: bytes, *, skip_connection: str | None = None
    ) -> None:
        await self.rt.sio.emit(
            YjsEvent.SYNC_UPDATE,
            update,
            namespace=namespace_of(document_id),
            skip_sid=skip_connection,
        )

    async def membership_changed(
        self, document_id: uuid.UUID, user_id: uuid.UUID, role: DocumentRole | None
    ) -> None:
        for yjs in self.rt.yjs.of_document(document_id):
            if yjs.user_id != user_id:
                continue
            if role is None:
                await end_yjs_connection(self.rt, yjs, "removed", "you are no longer a member")
            else:
                yjs.role = role
        for connection in self.rt.connections.of_user(user_id):
            if role is None:
                if document_id in connection.rooms:
                    await self._remove(connection.sid, document_id, "removed")
                continue
            if document_id in connection.rooms:
                connection.rooms[document_id] = role
            await self.rt.emit(
                ServerEvent.ROOM_ROLE,
                {"document_id": str(document_id), "role": role.value},
                to=connection.sid,
            )

    async def document_deleted(self, document_id: uuid.UUID) -> None:
        for yjs in self.rt.yjs.of_document(document_id):
            await end_yjs_connection(self.rt, yjs, "deleted", "the document was deleted")
        for connection in self.rt.connections.in_room(document_id):
            await self._remove(connection.sid, document_id, "deleted")

    async def user_disabled(self, user_id: uuid.UUID) -> None:
        for yjs in self.rt.yjs.of_user(user_id):
            await end_yjs_connection(self.rt, yjs, "user_disabled", "the account was disabled")
        for connection in self.rt.connections.of_user(user_id):
            await end_connection(
                self.rt, connection.sid, "user_disabled", "the account was disabled"
            )

    async def _remove(self, sid: str, document_id: uuid.UUID, reason: str) -> None:
        connection = self.rt.connections.get(sid)
        if connection is None:
            return
        await self.rt.emit(
            ServerEvent.ROOM_REMOVED,
            {"document_id": str(document_id), "reason": reason},
            to=sid,
        )
        await leave_room(self.rt, connection, document_id)
