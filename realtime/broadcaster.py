"""The ``Broadcaster`` that services publish through, on ``Delivery``.

Room events reach other nodes through ``Delivery`` itself. What the other calls do to
connections (end them, take them out of a room, change a Yjs connection's role) each
node does to its own: with a cluster link, the node where the change was made does
it here and ``announce``s it, and every other node does it on hearing (``act``).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Hashable
from typing import Any

from app.events import EventClass, RevokedBecause
from app.wire import ServerEvent
from realtime.cluster import RedisLink
from realtime.delivery import Event
from realtime.namespaces.main import end_connection
from realtime.namespaces.rooms import leave_room
from realtime.namespaces.yjs import YjsEvent, YjsNamespace, end_yjs_connection
from realtime.state import Realtime, room_of, user_room_of, yjs_room_of
from realtime.yjs_connections import YjsConnection
from storage.models import DocumentRole

SESSION_REVOKED = "session_revoked"
REVOKED_MESSAGES: dict[RevokedBecause, str] = {
    "logout": "this session was signed out",
    "token_reused": "this session was revoked: its refresh token was used twice; sign in again",
}


class Action(enum.StrEnum):
    """What one node asks of the others' connections (``RedisLink.announce``)."""

    MEMBERSHIP_CHANGED = "membership_changed"
    DOCUMENT_DELETED = "document_deleted"
    USER_DISABLED = "user_disabled"
    SESSION_REVOKED = "session_revoked"


def _id(value: str | None) -> uuid.UUID:
    return uuid.UUID(value)


class SocketBroadcaster:
    def __init__(self, rt: Realtime, cluster: RedisLink | None = None) -> None:
        self.rt = rt
        self._cluster = cluster

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
        if self._cluster is not None:
            # To this node's clients only: the live documents carry each stored update
            # to every node holding the document (realtime/cluster/documents.py), and
            # each node hands it to its own clients once its copy has it. Relayed
            # here too, the others' clients would get it twice.
            self.rt.delivery.to_local_room(yjs_room_of(document_id), event, skip=skip_connection)
        else:
            self.rt.delivery.to_room(yjs_room_of(document_id), event, skip=skip_connection)

    def document_resync(self, document_id: uuid.UUID) -> None:
        namespace = self.rt.sio.namespace_handlers.get("*")
        if isinstance(namespace, YjsNamespace):
            for yjs in self._documents(document_id):
                namespace.resync_later(yjs)

    async def membership_changed(
        self, document_id: uuid.UUID, user_id: uuid.UUID, role: DocumentRole | None
    ) -> None:
        self._announce(Action.MEMBERSHIP_CHANGED, document_id, user_id, role and role.value)
        await self._membership_changed_here(document_id, user_id, role)
        if role is not None:  # a room event: Delivery takes it to every node
            data = {"document_id": str(document_id), "role": role.value}
            self.rt.delivery.to_room(
                user_room_of(user_id), Event(ServerEvent.ROOM_ROLE, data, EventClass.CONTROL)
            )

    async def document_deleted(self, document_id: uuid.UUID) -> None:
        self._announce(Action.DOCUMENT_DELETED, document_id)
        await self._document_deleted_here(document_id)

    async def user_disabled(self, user_id: uuid.UUID) -> None:
        self._announce(Action.USER_DISABLED, user_id)
        await self._user_disabled_here(user_id)

    async def session_revoked(
        self, user_id: uuid.UUID, session_id: uuid.UUID, because: RevokedBecause
    ) -> None:
        self._announce(Action.SESSION_REVOKED, user_id, session_id, because)
        await self._session_revoked_here(user_id, session_id, because)

    # --- on this node, for this node's change or another's --------------------------

    def act(self, action: str, args: list[str | None]) -> None:
        """Another node's ``announce``: do it to this node's connections."""
        self.rt.spawn(self._act(action, args))

    async def _act(self, action: str, args: list[str | None]) -> None:
        match action:
            case Action.MEMBERSHIP_CHANGED:
                document, user, role = args
                await self._membership_changed_here(
                    _id(document), _id(user), DocumentRole(role) if role else None
                )
            case Action.DOCUMENT_DELETED:
                await self._document_deleted_here(_id(*args))
            case Action.USER_DISABLED:
                await self._user_disabled_here(_id(*args))
            case Action.SESSION_REVOKED:
                user, session, because = args
                reason = next((r for r in REVOKED_MESSAGES if r == because), None)
                if reason is None:
                    raise ValueError(f"no such reason: {because!r}")
                await self._session_revoked_here(_id(user), _id(session), reason)
            case _:
                raise ValueError(f"no such action: {action!r}")

    def _announce(self, action: Action, *args: uuid.UUID | str | None) -> None:
        if self._cluster is not None:
            self._cluster.announce(action, *(None if a is None else str(a) for a in args))

    async def _membership_changed_here(
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

    async def _document_deleted_here(self, document_id: uuid.UUID) -> None:
        for yjs in self._documents(document_id):
            await end_yjs_connection(self.rt, yjs, "deleted", "the document was deleted")
        for sid in self.rt.delivery.members(room_of(document_id)):
            await self._remove(sid, document_id, "deleted")

    async def _user_disabled_here(self, user_id: uuid.UUID) -> None:
        for yjs in self.rt.yjs.of_user(user_id):
            await end_yjs_connection(self.rt, yjs, "user_disabled", "the account was disabled")
        for sid in self.rt.delivery.members(user_room_of(user_id)):
            await end_connection(self.rt, sid, "user_disabled", "the account was disabled")

    async def _session_revoked_here(
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
