"""Keeps the index's copy of each knowledge entry in step with the database.

The database is the source of truth: each entry has a ``version`` (bumped by every
change the index must see) and an ``indexed_version`` (what the index holds). A write
to the index that fails (Qdrant down, the embedder failing) leaves the entry behind:
it is written again after ``retry_seconds``, doubling up to ``max_retry_seconds``, and
the entries left behind by an earlier process are swept at start. Deletions that
failed are retried the same way (from memory: their rows are gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.services.knowledge.embeddings import EmbeddingError
from app.services.knowledge.index import Item, SearchIndex
from storage.db import read_session
from storage.models import KnowledgeEntry
from storage.repositories import knowledge as knowledge_repo
from storage.vectors import VectorStoreError

log = logging.getLogger(__name__)

KIND = "knowledge"
SWEEP_BATCH = 100
REBUILD_BATCH = 50  # entries embedded and written together by a rebuild
IndexFailure = (VectorStoreError, EmbeddingError)


def entry_payload(entry: KnowledgeEntry) -> dict[str, object]:
    return {
        "approved": entry.approved,
        "owner": str(entry.owner_id) if entry.owner_id else "",
        "tags": list(entry.tags),
    }


class EntryIndexer:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        index: SearchIndex,
        *,
        retry_seconds: float = 5.0,
        max_retry_seconds: float = 300.0,
    ) -> None:
        self._sessions = sessions
        self.index = index
        self._retry_seconds = retry_seconds
        self._max_retry_seconds = max_retry_seconds
        self._wait = retry_seconds
        self._removals: set[uuid.UUID] = set()
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- one entry ------------------------------------------------------------------

    async def sync(self, entry_id: uuid.UUID) -> bool:
        """Write the entry as the database has it now (or remove it, gone); ``False``
        if the index failed (a retry is scheduled)."""
        lock = self._locks.setdefault(entry_id, asyncio.Lock())
        try:
            async with lock:  # one write per entry at a time: the last read wins
                return await self._sync(entry_id)
        finally:
            if not lock.locked() and self._locks.get(entry_id) is lock:
                del self._locks[entry_id]

    async def _sync(self, entry_id: uuid.UUID) -> bool:
        async with read_session(self._sessions) as session:
            entry = await knowledge_repo.get_entry(session, entry_id)
        try:
            if entry is None:
                await self.index.remove(KIND, [str(entry_id)])
                return True
            await self.index.put(KIND, str(entry.id), entry.title, entry.text, entry_payload(entry))
        except IndexFailure as exc:
            log.warning("knowledge entry %s not indexed (retried later): %s", entry_id, exc)
            self._retry_later()
            return False
        async with self._sessions.begin() as session:
            await knowledge_repo.mark_indexed(session, entry.id, entry.version)
        return True

    async def removed(self, entry_id: uuid.UUID) -> bool:
        try:
            await self.index.remove(KIND, [str(entry_id)])
        except IndexFailure as exc:
            log.warning("knowledge entry %s not removed (retried later): %s", entry_id, exc)
            self._removals.add(entry_id)
            self._retry_later()
            return False
        return True

    # --- catching up ----------------------------------------------------------------

    def start(self) -> None:
        """Sweep what an earlier process left behind (in the background)."""
        self._spawn(self.sweep)

    async def sweep(self) -> bool:
        """Write every entry that is behind, and the removals that failed; ``True``
        when nothing is left behind."""
        for entry_id in list(self._removals):
            self._removals.discard(entry_id)
            if not await self.removed(entry_id):
                return False
        while True:
            async with read_session(self._sessions) as session:
                stale = await knowledge_repo.stale_entry_ids(session, limit=SWEEP_BATCH)
            if not stale:
                break
            for entry_id in stale:
                if not await self.sync(entry_id):
                    return False  # the index is failing: all of it again later
        self._wait = self._retry_seconds
        return True

    def _retry_later(self) -> None:
        if self._timer is not None or self._closed:
            return
        loop = asyncio.get_running_loop()
        wait, self._wait = self._wait, min(self._wait * 2, self._max_retry_seconds)

        def fire() -> None:
            self._timer = None
            self._spawn(self.sweep)

        self._timer = loop.call_later(wait, fire)

    def _spawn(self, job: Callable[[], Awaitable[object]]) -> None:
        if self._closed:
            return

        async def run() -> None:
            try:
                await job()
            except Exception:
                log.exception("knowledge index sweep failed")
                self._retry_later()

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- all of it ------------------------------------------------------------------

    async def rebuild(self) -> int:
        """Drop the index and write every entry again, in batches: how many."""
        await self.index.store.drop()
        async with self._sessions.begin() as session:
            await knowledge_repo.mark_all_stale(session)
        self._removals.clear()
        async with read_session(self._sessions) as session:
            entry_ids = await knowledge_repo.all_entry_ids(session)
        for start in range(0, len(entry_ids), REBUILD_BATCH):
            async with read_session(self._sessions) as session:
                batch = await knowledge_repo.get_entries(
                    session, entry_ids[start : start + REBUILD_BATCH]
                )
            items = [
                Item(KIND, str(entry.id), entry.title, entry.text, entry_payload(entry))
                for entry in batch.values()
            ]
            await self.index.put_many(items)
            async with self._sessions.begin() as session:
                for entry in batch.values():
                    await knowledge_repo.mark_indexed(session, entry.id, entry.version)
                now = await knowledge_repo.get_entries(session, list(batch))
            # An entry changed while its batch was written may have had its newer
            # passages overwritten by the older ones: written again.
            for entry_id, entry in batch.items():
                newer = now.get(entry_id)
                if newer is None or newer.version != entry.version:
                    await self.sync(entry_id)
        await self.sweep()
        return len(entry_ids)

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
