"""Room chat: ordered, idempotent sends; history; edits and deletions.

Every send of one document runs under that document's lock, from taking the next
``seq`` to handing the message to the broadcaster, so a room hears its messages in
``seq`` order. Joins take the same lock while they read the backlog and enter the
room, so a message is either in the join's backlog or delivered live, never neither.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.principal import Principal
from app.errors import Forbidden, NotFound
from app.events import Broadcaster, EventClass
from app.services.cache import ExpiringCache
from app.services.documents import DocumentView, Memberships, RoomAccess, membership
from app.wire import MessageOut, ServerEvent, dump
from storage.db import read_session
from storage.errors import AlreadyExists
from storage.models import AuthorKind, DocumentRole
from storage.repositories import messages as messages_repo
from storage.repositories import users as users_repo

CAN_WRITE = frozenset({DocumentRole.OWNER, DocumentRole.EDITOR})


class KeyedLocks:
    """One asyncio lock per key, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[uuid.UUID, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: uuid.UUID) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclass(frozen=True, slots=True)
class Backlog:
    messages: list[MessageOut]
    has_more: bool  # more than one page was missed: page on with `chat:history`
    last_seq: int


class ChatService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        broadcaster: Broadcaster,
        memberships: Memberships,
        *,
        page_size: int,
    ) -> None:
        self._sessions = sessions
        self._broadcaster = broadcaster
        self._memberships = memberships
        # Each room's last seq, kept by the sends of this process (under the room lock).
        self._last_seqs: ExpiringCache[uuid.UUID, int] = ExpiringCache(
            ttl=memberships.ttl, max_entries=memberships.max_entries
        )
        self._locks = KeyedLocks()
        self.page_size = page_size

    def room_lock(self, document_id: uuid.UUID) -> AbstractAsyncContextManager[None]:
        """Held by sends and joins of one document (see the module docstring)."""
        return self._locks.hold(document_id)

    async def member(self, principal: Principal, document_id: uuid.UUID) -> DocumentView:
        """The document and the caller's role (``NotFound`` for non-members)."""
        async with read_session(self._sessions) as session:
            return await membership(session, principal, document_id)

    async def access(self, principal: Principal, document_id: uuid.UUID) -> RoomAccess:
        """The caller's way into the room (``NotFound`` for non-members); cached."""

        async def load() -> RoomAccess:
            view = await self.member(principal, document_id)
            return RoomAccess(view.document.id, view.document.title, view.role)

        return await self._memberships.get_or_load((document_id, principal.user_id), load)

    async def last_seq(self, document_id: uuid.UUID) -> int:
        """The room's last ``seq``; call it holding ``room_lock(document_id)``."""

        async def load() -> int:
            async with read_session(self._sessions) as session:
                return await messages_repo.last_seq(session, document_id)

        return await self._last_seqs.get_or_load(document_id, load)

    async def missed(self, document_id: uuid.UUID, since_seq: int) -> Backlog:
        """The first page of messages after ``since_seq``, for a join that catches up.

        Call it while holding ``room_lock(document_id)``: then every later message
        is still to be broadcast, and the joiner, already in the room, receives it.
        """
        async with read_session(self._sessions) as session:
            rows = await messages_repo.messages_after(
                session, document_id, since_seq, limit=self.page_size + 1
            )
            last_seq = await messages_repo.last_seq(session, document_id)
        page = [MessageOut.of(m, name) for m, name in rows[: self.page_size]]
        return Backlog(page, has_more=len(rows) > self.page_size, last_seq=last_seq)

    async def send(
        self,
        principal: Principal,
        document_id: uuid.UUID,
        *,
        client_msg_id: str,
        text: str,
        connection_id: str | None = None,
    ) -> MessageOut:
        """Store and broadcast a message; a retry with the same ``client_msg_id``
        returns the stored message and broadcasts nothing."""
        async with self.room_lock(document_id):
            try:
                async with self._sessions.begin() as session:
                    view = await membership(session, principal, document_id)
                    if view.role not in CAN_WRITE:
                        raise Forbidden("viewers cannot send messages")
                    message = await messages_repo.append_message(
                        session,
                        document_id=document_id,
                        author_kind=AuthorKind.USER,
                        author_id=principal.user_id,
                        client_msg_id=client_msg_id,
                        text=text,
                    )
            except AlreadyExists:
                # A retry: the transaction rolled back (its seq with it); answer
                # with what the first attempt stored.
                async with read_session(self._sessions) as session:
                    found = await messages_repo.find_by_client_msg_id(
                        session, document_id, principal.user_id, client_msg_id
                    )
                assert found is not None
                return MessageOut.of(found, principal.username)
            out = MessageOut.of(message, principal.username)
            self._last_seqs.put(document_id, message.seq)
            self._announce(ServerEvent.CHAT_MESSAGE, out, connection_id)
            return out

    async def post_assistant(
        self,
        document_id: uuid.UUID,
        text: str,
        meta: dict[str, Any],
        *,
        also: Callable[[AsyncSession], Awaitable[object]] | None = None,
    ) -> MessageOut:
        """Store and broadcast an assistant message (in seq order, like any send);
        ``also`` writes in the same transaction (the reply's usage)."""
        async with self.room_lock(document_id):
            async with self._sessions.begin() as session:
                message = await messages_repo.append_message(
                    session,
                    document_id=document_id,
                    author_kind=AuthorKind.ASSISTANT,
                    author_id=None,
                    text=text,
                    meta=meta,
                )
                if also is not None:
                    await also(session)
            out = MessageOut.of(message, None)
            self._last_seqs.put(document_id, message.seq)
            self._announce(ServerEvent.CHAT_MESSAGE, out, None)
            return out

    async def history(
        self,
        principal: Principal,
        document_id: uuid.UUID,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int,
    ) -> tuple[list[MessageOut], bool]:
        """Up to ``limit`` messages, oldest first: those just before ``before_seq``
        (the newest when neither bound is given) or just after ``after_seq``; and
        whether more exist in that direction."""
        async with read_session(self._sessions) as session:
            await membership(session, principal, document_id)
            if after_seq is not None:
                rows = await messages_repo.messages_after(
                    session, document_id, after_seq, limit=limit + 1
                )
                return [MessageOut.of(m, n) for m, n in rows[:limit]], len(rows) > limit
            rows = await messages_repo.messages_before(
                session, document_id, before_seq, limit=limit + 1
            )
        return [MessageOut.of(m, n) for m, n in rows[-limit:]], len(rows) > limit

    async def edit(
        self,
        principal: Principal,
        document_id: uuid.UUID,
        message_id: uuid.UUID,
        text: str,
        *,
        connection_id: str | None = None,
    ) -> MessageOut:
        """Authors edit their own messages while they still may write."""
        async with self._sessions.begin() as session:
            role = (await membership(session, principal, document_id)).role
            message = await messages_repo.get_message(session, document_id, message_id)
            if message is None or message.deleted_at is not None:
                raise NotFound("no such message")
            if message.author_id != principal.user_id:
                raise Forbidden("only the author can edit a message")
            if role not in CAN_WRITE:
                raise Forbidden("viewers cannot edit messages")
            message.text = text
            message.edited_at = datetime.now(UTC)
        out = MessageOut.of(message, principal.username)
        self._announce(ServerEvent.CHAT_EDITED, out, connection_id)
        return out

    async def delete(
        self,
        principal: Principal,
        document_id: uuid.UUID,
        message_id: uuid.UUID,
        *,
        connection_id: str | None = None,
    ) -> MessageOut:
        """Authors delete their own messages, the document's owner any message.
        The text is erased; the ``seq`` stays, so histories keep no gaps."""
        async with self._sessions.begin() as session:
            role = (await membership(session, principal, document_id)).role
            message = await messages_repo.get_message(session, document_id, message_id)
            if message is None or message.deleted_at is not None:
                raise NotFound("no such message")
            is_author = message.author_id == principal.user_id and role in CAN_WRITE
            if not is_author and role is not DocumentRole.OWNER:
                raise Forbidden("only the author or the owner can delete a message")
            message.text = ""
            message.deleted_at = datetime.now(UTC)
            author = None
            if message.author_id is not None:
                user = await users_repo.get_user(session, message.author_id)
                author = user.username if user is not None else None
        out = MessageOut.of(message, author)
        self._announce(ServerEvent.CHAT_DELETED, out, connection_id)
        return out

    def _announce(self, event: ServerEvent, message: MessageOut, connection_id: str | None) -> None:
        self._broadcaster.to_room(
            message.document_id,
            event,
            {"document_id": str(message.document_id), "message": dump(message)},
            kind=EventClass.CHAT,
            skip_connection=connection_id,
        )
