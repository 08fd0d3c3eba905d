"""Room documents in the search index, for their members.

A document's passages are written again once its edits have been quiet for
``debounce`` seconds, and no later than ``max_delay`` after the first edit not yet
written (a document edited without pause is still found). They are deleted with the
document. Who may find them is not in the index: a search reads the caller's
memberships from the database (``KnowledgeService.passages``), so a member removed
from a document stops finding it at once, and nothing needs rewriting.

A write that fails is tried again after ``retry_seconds``, doubling up to
``max_retry_seconds``; a reindex writes every document.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.services.knowledge.entry_index import IndexFailure
from app.services.knowledge.index import SearchIndex
from storage.db import read_session
from storage.repositories import documents as documents_repo

log = logging.getLogger(__name__)

KIND = "document"
ReadText = Callable[[uuid.UUID], Awaitable[str]]


class DocumentIndexer:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        index: SearchIndex,
        read_text: ReadText,
        *,
        debounce: float,
        max_delay: float,
        retry_seconds: float = 5.0,
        max_retry_seconds: float = 300.0,
    ) -> None:
        self._sessions = sessions
        self._index = index
        self._read_text = read_text
        self._debounce = debounce
        self._max_delay = max_delay
        self._retry_seconds = retry_seconds
        self._max_retry_seconds = max_retry_seconds
        # Documents waiting to be written: when their first unwritten edit came, and
        # the timer that writes them.
        self._due: dict[uuid.UUID, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[uuid.UUID, float] = {}  # the next wait after a failure
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[bool]] = set()
        self._closed = False

    def changed(self, document_id: uuid.UUID) -> None:
        """An edit or a rename: write the document's passages when it is quiet."""
        if self._closed:
            return
        now = time.monotonic()
        first = now
        if document_id in self._due:
            first, timer = self._due[document_id]
            timer.cancel()
        delay = max(0.0, min(self._debounce, first + self._max_delay - now))
        self._schedule(document_id, delay, first)

    def _schedule(self, document_id: uuid.UUID, delay: float, first: float) -> None:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(delay, self._spawn, document_id)
        self._due[document_id] = (first, timer)

    def _spawn(self, document_id: uuid.UUID) -> None:
        self._due.pop(document_id, None)
        task = asyncio.get_running_loop().create_task(self.write(document_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def write(self, document_id: uuid.UUID) -> bool:
        """Write the document's passages now (removed, if it is gone); ``False`` if
        the index failed (tried again later)."""
        lock = self._locks.setdefault(document_id, asyncio.Lock())
        try:
            async with lock:
                return await self._write(document_id)
        finally:
            if not lock.locked() and self._locks.get(document_id) is lock:
                del self._locks[document_id]

    async def _write(self, document_id: uuid.UUID) -> bool:
        async with read_session(self._sessions) as session:
            document = await documents_repo.get_document(session, document_id)
        try:
            if document is None:
                await self._index.remove(KIND, [str(document_id)])
            else:
                text = await self._read_text(document_id)
                await self._index.put(KIND, str(document_id), document.title, text, {})
        except IndexFailure as exc:
            wait = self._failures.get(document_id, self._retry_seconds)
            self._failures[document_id] = min(wait * 2, self._max_retry_seconds)
            log.warning("document %s not indexed (again in %.0f s): %s", document_id, wait, exc)
            if not self._closed and document_id not in self._due:
                self._schedule(document_id, wait, time.monotonic())
            return False
        except Exception:
            log.exception("document %s could not be indexed", document_id)
            return False
        self._failures.pop(document_id, None)
        return True

    async def removed(self, document_id: uuid.UUID) -> None:
        """The document was deleted: its passages go now (or with the retries)."""
        due = self._due.pop(document_id, None)
        if due is not None:
            due[1].cancel()
        await self.write(document_id)

    async def rebuild(self) -> int:
        """Write every document (the index was dropped): how many were written."""
        async with read_session(self._sessions) as session:
            document_ids = await documents_repo.all_document_ids(session)
        written = 0
        for document_id in document_ids:
            if await self.write(document_id):
                written += 1
        return written

    async def flush(self) -> None:
        """Write now what waits for its debounce (shutdown, tests)."""
        for document_id, (_, timer) in list(self._due.items()):
            timer.cancel()
            self._due.pop(document_id, None)
            await self.write(document_id)

    async def close(self) -> None:
        """Shutdown: what waits is dropped (a reindex writes it again)."""
        self._closed = True
        for _, timer in self._due.values():
            timer.cancel()
        self._due.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
