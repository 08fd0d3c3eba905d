"""Room chat: ordered, idempotent sends; history; edits and deletions.

Messages are stored by one writer (:mod:`app.services.chat_writer`), which commits
them in batches and hands them to the broadcaster in ``seq`` order. A join enters
the room at the last announced ``seq``, so a message is either in the join's backlog
or delivered live, never neither and never both. With many nodes a ``ChatOrder``
(realtime/cluster/chat.py) does both: it orders every node's messages by ``seq`` and
says where a join's backlog ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.principal import Principal
from app.errors import Forbidden, NotFound
from app.events import Broadcaster, EventClass
from app.services.cache import ExpiringCache
from app.services.chat_writer import ChatWriter, Pending, Stored
from app.services.documents import Memberships, RoomAccess, membership
from app.wire import MessageOut, ServerEvent, dump, message_data
from storage.chat_batches import batch_writer
from storage.db import read_session
from storage.models import AuthorKind, DocumentRole
from storage.repositories import messages as messages_repo
from storage.repositories import users as users_repo
from storage.repositories.usage import NewUsage

CAN_WRITE = frozenset({DocumentRole.OWNER, DocumentRole.EDITOR})


@dataclass(frozen=True, slots=True)
class Backlog:
    has_more: bool  # more than one page was missed: page on with `chat:history`
    last_seq: int
    # The messages as JSON, made once for every join that got the same page.
    encoded: orjson.Fragment


class ChatOrder(Protocol):
    """Chat across nodes: new messages out in ``seq`` order, and the split of a join."""

    async def enter(self, document_id: uuid.UUID, enter: Callable[[], None]) -> int:
        """Call ``enter`` where every message up to the seq returned (each stored) has
        reached the room's members here and every later one will reach them."""

    def announce(
        self, document_id: uuid.UUID, seq: int, data: dict[str, Any], skip: str | None
    ) -> None:
        """A message this node stored, to the room on every node."""


READ_KEEP_SECONDS = 1.0
# Reads kept at most (a crowd asks for one or a few): each HISTORY_PAGE_SIZE + 1 rows
# and their page encoded, at the defaults and the longest messages ~3 MB.
READS_KEPT = 8


class _Read:
    """Rows read after a seq, shared by the joins that asked for them while it ran; the
    page they make is built and encoded once for all of them."""

    __slots__ = ("_page", "page_size", "rows")

    def __init__(self, rows: list[messages_repo.MessageRow], page_size: int) -> None:
        self.rows = rows
        self.page_size = page_size
        self._page: Backlog | None = None

    def backlog(self, last_seq: int) -> Backlog:
        if self._page is None:
            self._page = Backlog(
                len(self.rows) > self.page_size, last_seq, _encode(self.rows[: self.page_size])
            )
        return dataclasses.replace(self._page, last_seq=last_seq)


@dataclass(eq=False)
class _Reads:
    """One user's sends in one document that wait for the user's role to be read."""

    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0


class ChatService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        engine: AsyncEngine,
        broadcaster: Broadcaster,
        memberships: Memberships,
        room_access: Callable[[Principal, uuid.UUID], Awaitable[RoomAccess]],
        *,
        page_size: int,
        max_batch: int,
        linger: float = 0.0,
        order: ChatOrder | None = None,
    ) -> None:
        """``room_access`` is DocumentService's (which fills ``memberships``); ``order``
        is the cluster's (none: this process alone)."""
        self._sessions = sessions
        self._order = order
        self._broadcaster = broadcaster
        self._memberships = memberships
        self._room_access = room_access
        # Sends waiting for their sender's role to be read, by (document, user).
        self._reading: dict[tuple[uuid.UUID, uuid.UUID], _Reads] = {}
        self._read_tasks: set[asyncio.Task[tuple[Stored, bool]]] = set()
        self._writer = ChatWriter(
            engine,
            self._announce_new,
            batches=batch_writer(engine),
            max_batch=max_batch,
            max_known=memberships.max_entries,
            linger=linger,
        )
        self.page_size = page_size
        # Catch-up reads, shared by the joins that ask for the same page while it runs
        # and, on a process of its own, for READ_KEEP_SECONDS after: a crowd that
        # reconnects at once after a restart (each client holding the same last seq)
        # reads the page once and encodes it once. A later message does not make a
        # kept read wrong (enter_room reads what came after it); an edit or a deletion
        # in a document drops its reads, so later joins read again. With a cluster,
        # another process's edit would not drop them: kept only while they run.
        self._reads: ExpiringCache[tuple[uuid.UUID, int], _Read] = ExpiringCache(
            ttl=0 if order is not None else READ_KEEP_SECONDS, max_entries=READS_KEPT
        )

    async def close(self) -> None:
        """Store the messages queued; refuse later sends."""
        await self._writer.close()

    async def enter_room(
        self, document_id: uuid.UUID, since_seq: int | None, enter: Callable[[], None]
    ) -> Backlog:
        """Call ``enter`` (which puts the connection in the room) where the room's
        messages split into those before it, which the backlog holds (its first page
        after ``since_seq``; none without it), and those it will receive live.

        The split is the last announced seq: ``enter`` runs in the turn that reads it,
        so no message is in both halves or in neither.
        """
        if (
            since_seq is not None
            and self._order is None
            and since_seq >= await self._writer.announced(document_id)
        ):
            since_seq = None  # nothing missed: no read (a reconnect into a quiet room)
        read: _Read | None = None
        if since_seq is not None:
            # Joins asking for the same page at the same moment (a crowd arriving) share
            # its read; one that asks after an edit or a deletion reads again.
            key = (document_id, since_seq)

            async def load() -> _Read:
                async with read_session(self._sessions) as session:
                    rows = await messages_repo.messages_after(
                        session, document_id, since_seq, limit=self.page_size + 1
                    )
                return _Read(rows, self.page_size)

            read = await self._reads.get_or_load(key, load)
        if self._order is not None:
            last_seq = await self._order.enter(document_id, enter)
        else:
            await self._writer.announced(document_id)
            last_seq = self._writer.announced_now(document_id)
            enter()
        if read is None:
            return Backlog(has_more=False, last_seq=last_seq, encoded=_encode([]))
        assert since_seq is not None
        # Seqs are gapless: the rows run from since_seq + 1. Those past last_seq
        # will come live; those committed and announced while the read ran are
        # read now (a batch at most).
        rows = read.rows
        if rows and rows[-1].seq > last_seq:  # in seq order: usually all of them
            rows = [row for row in rows if row.seq <= last_seq]
        read_up_to = since_seq + len(rows)
        if len(rows) <= self.page_size and read_up_to < last_seq:
            async with read_session(self._sessions) as session:
                more = await messages_repo.messages_after(
                    session, document_id, read_up_to, limit=self.page_size + 1 - len(rows)
                )
            rows = rows + [row for row in more if row.seq <= last_seq]  # read.rows is shared
        elif rows is read.rows:
            return read.backlog(last_seq)  # the page the others sharing the read got
        return Backlog(
            has_more=len(rows) > self.page_size,
            last_seq=last_seq,
            encoded=_encode(rows[: self.page_size]),
        )

    def submit(
        self,
        principal: Principal,
        document_id: uuid.UUID,
        *,
        client_msg_id: str,
        text: str,
        connection_id: str | None = None,
    ) -> asyncio.Future[tuple[Stored, bool]]:
        """Store and broadcast a message: the future of it stored, and whether it is new
        (a retry with the same ``client_msg_id`` gets the stored message and broadcasts
        nothing).

        Queued at once when the role is in the membership cache (a send costs no read of
        its own and no task); else, and while an earlier send of the same user in the
        document still waits for its read, after the read, in a task. Either way a
        user's sends reach the writer in the order they came.
        """
        key = (document_id, principal.user_id)
        # Usually no send waits for a read: not even a lookup then.
        reads = self._reading.get(key) if self._reading else None
        if reads is None:
            access = self._memberships.get(key)
            if access is not None:
                return self._submit(
                    access, principal, document_id, client_msg_id, text, connection_id
                )
            reads = self._reading[key] = _Reads()
        reads.waiting += 1
        after_read = self._submit_after_read(
            reads, principal, document_id, client_msg_id, text, connection_id
        )
        task = asyncio.get_running_loop().create_task(after_read)
        self._read_tasks.add(task)  # the loop keeps tasks weakly
        task.add_done_callback(self._read_tasks.discard)
        return task

    async def _submit_after_read(
        self,
        reads: _Reads,
        principal: Principal,
        document_id: uuid.UUID,
        client_msg_id: str,
        text: str,
        connection_id: str | None,
    ) -> tuple[Stored, bool]:
        try:
            # One at a time, first come first served: a send that finds the role read
            # (cached by an earlier send's read) is still queued after that send.
            async with reads.turn:
                access = await self._room_access(principal, document_id)
                sent = self._submit(
                    access, principal, document_id, client_msg_id, text, connection_id
                )
        finally:
            reads.waiting -= 1
            if not reads.waiting:
                del self._reading[(document_id, principal.user_id)]
        return await sent

    def _submit(
        self,
        access: RoomAccess,
        principal: Principal,
        document_id: uuid.UUID,
        client_msg_id: str,
        text: str,
        connection_id: str | None,
    ) -> asyncio.Future[tuple[Stored, bool]]:
        if access.role not in CAN_WRITE:
            raise Forbidden("viewers cannot send messages")
        return self._writer.submit(
            Pending(
                document_id=document_id,
                author_kind=AuthorKind.USER,
                author_id=principal.user_id,
                author_name=principal.username,
                client_msg_id=client_msg_id,
                text=text,
                skip_connection=connection_id,
            )
        )

    async def post_assistant(
        self,
        document_id: uuid.UUID,
        text: str,
        meta: dict[str, Any],
        *,
        usage: NewUsage | None = None,
    ) -> Stored:
        """Store and broadcast an assistant message (in seq order, like any send), with
        the reply's ``usage`` in the same transaction."""
        message, _ = await self._writer.write(
            Pending(
                document_id=document_id,
                author_kind=AuthorKind.ASSISTANT,
                author_id=None,
                author_name=None,
                text=text,
                meta=meta,
                usage=usage,
            )
        )
        return message

    async def history(
        self,
        principal: Principal,
        document_id: uuid.UUID,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int,
    ) -> tuple[list[messages_repo.MessageRow], bool]:
        """Up to ``limit`` messages, oldest first: those just before ``before_seq``
        (the newest when neither bound is given) or just after ``after_seq``; and
        whether more exist in that direction. As read: REST makes them ``MessageOut``,
        Socket.IO sends ``message_data``."""
        async with read_session(self._sessions) as session:
            await membership(session, principal, document_id)
            if after_seq is not None:
                rows = await messages_repo.messages_after(
                    session, document_id, after_seq, limit=limit + 1
                )
                return rows[:limit], len(rows) > limit
            rows = await messages_repo.messages_before(
                session, document_id, before_seq, limit=limit + 1
            )
        return rows[-limit:], len(rows) > limit

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
        self._reads.drop_where(lambda key: key[0] == document_id)  # joins read the edit
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
        self._reads.drop_where(lambda key: key[0] == document_id)  # joins read the deletion
        self._announce(ServerEvent.CHAT_DELETED, out, connection_id)
        return out

    async def stored_after(
        self, document_id: uuid.UUID, after_seq: int, up_to: int
    ) -> list[dict[str, Any]]:
        """The stored messages with ``after_seq < seq <= up_to`` (at most a page of
        500), oldest first, as the wire has them (ChatOrder's gap reads)."""
        async with read_session(self._sessions) as session:
            rows = await messages_repo.messages_after(
                session, document_id, after_seq, limit=min(up_to - after_seq, 500)
            )
        return [message_data(row) for row in rows if row.seq <= up_to]

    async def stored_last_seq(self, document_id: uuid.UUID) -> int:
        """The newest seq committed in the document."""
        async with read_session(self._sessions) as session:
            return await messages_repo.last_seq(session, document_id)

    def _announce_new(self, message: Stored, connection_id: str | None) -> None:
        data = {"document_id": message.data["document_id"], "message": message.data}
        if self._order is not None:
            self._order.announce(message.document_id, message.seq, data, connection_id)
            return
        self._broadcaster.to_room(
            message.document_id,
            ServerEvent.CHAT_MESSAGE,
            data,
            kind=EventClass.CHAT,
            skip_connection=connection_id,
        )

    def _announce(self, event: ServerEvent, message: MessageOut, connection_id: str | None) -> None:
        self._broadcaster.to_room(
            message.document_id,
            event,
            {"document_id": str(message.document_id), "message": dump(message)},
            kind=EventClass.CHAT,
            skip_connection=connection_id,
        )


def _encode(rows: list[messages_repo.MessageRow]) -> orjson.Fragment:
    return orjson.Fragment(orjson.dumps([message_data(row) for row in rows]))
