"""Group commit for chat: every message of this process is stored by one writer.

Sends queue here; the writer takes what has queued (at most ``max_batch``) and stores
it in one transaction, one trip to the database (storage/chat_batches.py): the
``seq``s of every document in the batch taken and the rows inserted. While a batch is
in flight the next sends queue behind it, so a busy server writes large batches and an
idle one writes each message at once.

A batch of several messages is evidence of senders who answer acks with their next
send (a busy room): they hear their acks together and send again within a moment, and
a writer that took only the first of those sends would commit the rest one small batch
at a time, each paying a commit. So after a batch of ``n > 1`` the next batch waits,
from its first message, until ``n`` have queued or ``linger`` seconds have passed,
whichever comes first (PostgreSQL's ``commit_delay`` with ``commit_siblings``, for
the same reason). A lone message never waits: the wait follows a batch of several,
and a wait that ends with fewer messages sets the next wait's aim to what came, so a
burst's end costs one wait at most.

Once its batch committed the writer hands the batch's new messages to ``announce``
in ``seq`` order, records each document's last announced ``seq``
(:meth:`ChatWriter.announced`: a join that reads it and enters the room in one turn
gets every later message live), and answers the senders, all in one event-loop turn.

A retry (the same ``client_msg_id`` from the same author in the same document) is
answered with the stored message and announced nowhere: within a batch by the first
of its copies; across batches by the unique index, whose violation sends the batch
down the careful path, which looks the keys up first. The careful path also isolates
a message that fails on its own (its author deleted meanwhile): it alone is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.errors import NotFound
from app.wire import iso, message_data, new_message_data
from storage.chat_batches import BatchWriter, Conflict, NewMessage, insert_in
from storage.models import AuthorKind, utcnow
from storage.repositories import messages as messages_repo
from storage.repositories.usage import NewUsage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored message: its document, its seq, and the message as the wire has it
    (``app.wire.message_data``'s dict, built once for its ack and every delivery)."""

    document_id: uuid.UUID
    seq: int
    data: dict[str, Any]


@dataclass(eq=False, slots=True)
class Pending:
    """A message waiting for its batch; ``done`` gets it and whether it is new."""

    document_id: uuid.UUID
    author_kind: AuthorKind
    author_id: uuid.UUID | None
    author_name: str | None
    text: str
    client_msg_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    usage: NewUsage | None = None  # an assistant reply's, stored in its transaction
    skip_connection: str | None = None
    done: asyncio.Future[tuple[Stored, bool]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    landed: bool = False  # stored or refused: out of flight (its sender may have left)

    @property
    def key(self) -> tuple[uuid.UUID, uuid.UUID | None, str] | None:
        """What makes a retry a retry (None: never one)."""
        if self.client_msg_id is None:
            return None
        return (self.document_id, self.author_id, self.client_msg_id)


class ChatWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        announce: Callable[[Stored, str | None], None],
        *,
        batches: BatchWriter | None,
        max_batch: int,
        max_known: int,
        linger: float = 0.0,
    ) -> None:
        """``batches`` writes a batch in one trip (storage.chat_batches.batch_writer);
        without it batches go through SQLAlchemy. ``linger``: the longest a batch waits
        for the senders of the one before (0: never)."""
        self._engine = engine
        self._announce = announce
        self._max_batch = max_batch
        self._linger = linger
        self._queue: deque[Pending] = deque()
        self._wakeup = asyncio.Event()
        self._filled = asyncio.Event()  # the queue reached ``_fill_to`` (0: not waiting)
        self._fill_to = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Per document: messages queued or committing (none: not a key), and the last
        # seq announced.
        self._in_flight: dict[uuid.UUID, int] = {}
        self._announced: dict[uuid.UUID, int] = {}
        self._max_known = max_known
        self._settled = asyncio.Event()  # set (and replaced) after every batch
        self._one_trip = batches

    async def write(self, message: Pending) -> tuple[Stored, bool]:
        """Store ``message`` with its document's next seq (or find its first copy)."""
        # A sender that gives up cancels only its wait: the message stays in its batch
        # and is stored or refused all the same.
        return await self.submit(message)

    def submit(self, message: Pending) -> asyncio.Future[tuple[Stored, bool]]:
        """Queue ``message``; the future :meth:`write` awaits (for a caller that takes
        the result in a callback rather than a task)."""
        if self._closed:
            raise RuntimeError("the chat writer is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="chat writer")
        self._queue.append(message)
        in_flight = self._in_flight
        in_flight[message.document_id] = in_flight.get(message.document_id, 0) + 1
        self._wakeup.set()
        if self._fill_to and len(self._queue) >= self._fill_to:
            self._filled.set()
        return message.done

    async def announced(self, document_id: uuid.UUID) -> int:
        """The last seq announced in the document: every message up to it was handed
        to ``announce``, every later one will be. Read it and act on it (enter the
        room) in one event-loop turn after this returns: see :meth:`announced_now`."""
        while document_id not in self._announced:
            if document_id in self._in_flight:
                # A batch of it may be committed and not yet announced: the database
                # would count it too early. Its announcement tells the seq.
                await self._settled.wait()
                continue
            async with self._engine.connect() as connection:
                stored = await messages_repo.last_seq(connection, document_id)
            if document_id not in self._announced and document_id not in self._in_flight:
                self._remember(document_id, stored)  # else a batch began: it knows better
        return self._announced[document_id]

    def announced_now(self, document_id: uuid.UUID) -> int:
        """:meth:`announced` without waiting: call it after that, in the same turn."""
        return self._announced[document_id]

    def _remember(self, document_id: uuid.UUID, seq: int) -> None:
        """Record a document's last announced seq, making room for a new document."""
        if len(self._announced) >= self._max_known and document_id not in self._announced:
            self._forget_idle()
        self._announced[document_id] = seq

    def _forget_idle(self) -> None:
        # The oldest documents with nothing in flight: their seq can be read again
        # from the database, as no batch of theirs is between its commit and its
        # announcement. A tenth more than needed: the scan is paid once in a while.
        excess = len(self._announced) - self._max_known + 1 + self._max_known // 10
        idle = [d for d in self._announced if d not in self._in_flight]
        for document_id in idle[:excess]:
            del self._announced[document_id]

    async def close(self) -> None:
        """Store what is queued, then stop; later writes are refused."""
        self._closed = True
        if self._task is not None:
            self._wakeup.set()
            self._filled.set()
            await self._task
        if self._one_trip is not None:
            await self._one_trip.close()

    async def _run(self) -> None:
        batch: list[Pending] = []
        aim = 1  # messages the next batch waits for: as many as the last one held
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue:
                    if len(self._queue) < aim and self._linger > 0 and not self._closed:
                        await self._gather(aim)
                    count = min(len(self._queue), self._max_batch)
                    batch = [self._queue.popleft() for _ in range(count)]
                    try:
                        await self._store(batch)
                    except Exception as exc:  # the database is away: each sender is told
                        log.exception("could not store %d chat messages", len(batch))
                        self._settle(batch, exc)
                    aim = count
                if self._closed:
                    return
        finally:
            # Cancelled (the loop is closing): nobody waits for ever.
            self._closed = True
            stopped = RuntimeError("the chat writer stopped")
            self._settle(batch, stopped)  # those it already answered are skipped
            self._settle(self._queue, stopped)
            self._queue.clear()

    async def _gather(self, aim: int) -> None:
        """Wait until ``aim`` messages queued, ``linger`` seconds at most."""
        self._fill_to = aim
        self._filled.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._linger):
                await self._filled.wait()
        self._fill_to = 0

    async def _store(self, batch: list[Pending]) -> None:
        try:
            stored = await self._insert(_first_copies(batch))
        except (Conflict, IntegrityError):
            # A retry of a stored message, or a message that cannot be stored.
            await self._store_carefully(batch)
            return
        self._finish(batch, stored, {})

    async def _store_carefully(self, batch: list[Pending]) -> None:
        async with self._engine.begin() as connection:
            found = await _stored_copies(connection, batch)
        fresh = [p for p in _first_copies(batch) if p.key not in found]
        try:
            stored = await self._insert(fresh)
        except (Conflict, IntegrityError):
            if len(batch) == 1:
                raise
            for message in batch:  # find the one that fails; the others are stored
                try:
                    await self._store_carefully([message])
                except Exception as exc:
                    self._settle([message], exc)
            return
        self._finish(batch, stored, found)

    async def _insert(self, messages: list[Pending]) -> dict[int, Stored]:
        """Store the messages with their seqs; what each (by ``id()``) became."""
        if not messages:
            return {}
        now = utcnow()
        rows = [
            NewMessage(
                id=id,
                document_id=m.document_id,
                author_kind=m.author_kind,
                author_id=m.author_id,
                client_msg_id=m.client_msg_id,
                text=m.text,
                meta=m.meta,
                usage=m.usage,
            )
            for m, id in zip(messages, time_ordered_uuids(len(messages), now), strict=True)
        ]
        if self._one_trip is not None:
            seqs = await self._one_trip.insert(rows, now)
        else:
            async with self._engine.begin() as connection:
                seqs = await insert_in(connection, rows, now)
        created_at = iso(now)
        stored: dict[int, Stored] = {}
        for message, row in zip(messages, rows, strict=True):
            seq = seqs.get(row.id)
            if seq is None:
                continue  # the document is gone: refused in _finish
            data = new_message_data(
                row.id,
                row.document_id,
                seq,
                row.author_kind,
                row.author_id,
                message.author_name,
                row.client_msg_id,
                row.text,
                row.meta,
                created_at,
            )
            stored[id(message)] = Stored(row.document_id, seq, data)
        return stored

    def _finish(
        self,
        batch: list[Pending],
        stored: dict[int, Stored],
        found: dict[tuple[Any, ...], Stored],
    ) -> None:
        """Answer every sender, then announce what is new in seq order (one turn: the
        answers reach no client before the announcements).

        Answered first, the senders' tasks run before the write that the first
        announcement schedules for the end of the turn (outbox.Flusher): a sender's
        ack leaves in the same write as the batch's messages to it, one system call
        where it was two."""
        # Every message stored as new (the usual batch): no copy to answer by its key.
        copies = len(stored) < len(batch)
        firsts: dict[tuple[Any, ...], Stored] = {}
        new: list[tuple[Pending, Stored]] = []
        for message in batch:
            self._landed(message)
            out = stored.get(id(message))
            if out is not None:
                new.append((message, out))
                if copies and (key := message.key) is not None:
                    firsts[key] = out
                _resolve(message, (out, True))
            elif (key := message.key) is not None and (key in firsts or key in found):
                _resolve(message, (firsts.get(key) or found[key], False))
            else:
                _fail(message, NotFound("no such document"))
        for message, out in new:
            self._announce(out, message.skip_connection)
            self._remember(message.document_id, out.seq)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        self._settled.set()
        self._settled = asyncio.Event()

    def _settle(self, batch: Iterable[Pending], exc: BaseException) -> None:
        for message in batch:
            if not message.landed:  # not answered in a batch already
                self._landed(message)
                _fail(message, exc)
        self._wake_waiters()

    def _landed(self, message: Pending) -> None:
        """``message`` is out of flight: stored, or refused."""
        message.landed = True
        left = self._in_flight[message.document_id] - 1
        if left:
            self._in_flight[message.document_id] = left
        else:
            del self._in_flight[message.document_id]


# Version 7 (RFC 9562): a Unix time in milliseconds, then 74 random bits, with the
# version and variant bits set. Ids that follow the clock land at the end of the
# primary key's index: a batch's rows touch one page of it, not one random page each
# (SQLite writes each touched page whole to its WAL, PostgreSQL its first change after
# a checkpoint). 10 rooms of one sender each, on a table of 170,000 messages, servers
# taking turns: CPU per message 0.86x on SQLite (8 of 8 pairs), 0.93x on PostgreSQL.
_UUID7_RANDOM = ~((0xF000 << 64) | (0xC000 << 48)) & (1 << 80) - 1
_UUID7_SET = (7 << 76) | (0x8000 << 48)


def time_ordered_uuids(count: int, at: datetime) -> list[uuid.UUID]:
    """``count`` version 7 UUIDs of the moment ``at``, from one read of the operating
    system's random source (uuid4's read per id took half its time)."""
    moment = int(at.timestamp() * 1000) << 80 | _UUID7_SET
    raw = os.urandom(10 * count)
    return [
        uuid.UUID(int=moment | int.from_bytes(raw[offset : offset + 10]) & _UUID7_RANDOM)
        for offset in range(0, 10 * count, 10)
    ]


def _first_copies(batch: list[Pending]) -> list[Pending]:
    """The batch without later copies of a message (retries sent before its ack)."""
    seen: dict[tuple[Any, ...], Pending] = {}
    firsts = []
    for message in batch:
        key = message.key
        if key is not None and seen.setdefault(key, message) is not message:
            continue
        firsts.append(message)
    return firsts


async def _stored_copies(
    connection: AsyncConnection, batch: list[Pending]
) -> dict[tuple[Any, ...], Stored]:
    """The batch's messages that are stored already, by key."""
    keys = {m.key for m in batch if m.key is not None}
    if not keys:
        return {}
    rows = await messages_repo.by_client_msg_ids(connection, keys)
    return {
        (r.document_id, r.author_id, r.client_msg_id): Stored(r.document_id, r.seq, message_data(r))
        for r in rows
    }


def _resolve(message: Pending, result: tuple[Stored, bool]) -> None:
    if not message.done.done():
        message.done.set_result(result)


def _fail(message: Pending, exc: BaseException) -> None:
    if not message.done.done():
        message.done.set_exception(exc)
        message.done.exception()  # retrieved: a sender that gave up logs nothing
