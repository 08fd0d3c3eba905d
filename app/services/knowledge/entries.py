"""Knowledge entries and who may do what with them.

| action | admin | power | user | guest |
| --- | --- | --- | --- | --- |
| create | ✓ (approved at once) | ✓ (pending until approved) | 403 | 403 |
| list, search, read | every entry | approved ones and their own | approved ones | 403 |
| update, delete | every entry | their own | 403 | 403 |
| approve, reindex | ✓ | 403 | 403 | 403 |

An entry someone may not read answers 404, as documents do for non-members. A power
user's change to an approved entry of theirs makes it pending again: what users read
is what an admin approved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.principal import Principal
from app.errors import Forbidden, NotFound, ServiceUnavailable
from app.services.knowledge.document_index import DocumentIndexer
from app.services.knowledge.entry_index import EntryIndexer, IndexFailure
from storage.db import read_session
from storage.models import GlobalRole, KnowledgeEntry, utcnow
from storage.repositories import documents as documents_repo
from storage.repositories import knowledge as knowledge_repo
from storage.vectors import Found, Scope

log = logging.getLogger(__name__)

EDITABLE = ("title", "text", "tags", "source")
# A search asks the index for this many passages per hit wanted: several passages of
# one entry, and entries the database no longer lets the caller read, are left out.
OVERFETCH = 3


@dataclass(frozen=True, slots=True)
class EntryHit:
    entry: KnowledgeEntry
    score: float
    passage: str


@dataclass(frozen=True, slots=True)
class Passage:
    """A passage the caller may read: of a knowledge entry or of a room document."""

    kind: Literal["knowledge", "document"]
    id: uuid.UUID
    title: str
    text: str
    score: float


@dataclass(frozen=True, slots=True)
class Reindexed:
    entries: int
    documents: int
    passages: int


def check_reader(principal: Principal) -> None:
    if principal.role is GlobalRole.GUEST:
        raise Forbidden("guests cannot use the knowledge base")


def may_read(principal: Principal, entry: KnowledgeEntry) -> bool:
    if principal.is_admin or entry.approved:
        return True
    return principal.role is GlobalRole.POWER and entry.owner_id == principal.user_id


def check_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("admins only")


class KnowledgeService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        indexer: EntryIndexer,
        documents: DocumentIndexer,
    ) -> None:
        self._sessions = sessions
        self._indexer = indexer
        self.documents = documents
        self._rebuilding: asyncio.Task[Reindexed] | None = None

    async def create(
        self,
        principal: Principal,
        *,
        title: str,
        text: str,
        tags: list[str],
        source: str | None,
    ) -> KnowledgeEntry:
        check_reader(principal)
        if principal.role not in (GlobalRole.ADMIN, GlobalRole.POWER):
            raise Forbidden("only power users and admins add knowledge entries")
        async with self._sessions.begin() as session:
            entry = await knowledge_repo.create_entry(
                session,
                title=title,
                text=text,
                tags=_unique(tags),
                source=source or None,
                owner_id=principal.user_id,
                approved_by=principal.user_id if principal.is_admin else None,
                now=utcnow(),
            )
        await self._changed(entry)
        return entry

    async def get(self, principal: Principal, entry_id: uuid.UUID) -> KnowledgeEntry:
        check_reader(principal)
        async with read_session(self._sessions) as session:
            return await _readable(session, principal, entry_id)

    async def list_entries(
        self,
        principal: Principal,
        *,
        tags: Sequence[str],
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
    ) -> Sequence[KnowledgeEntry]:
        """Newest first: the entries the caller may read, with every one of ``tags``."""
        check_reader(principal)
        async with read_session(self._sessions) as session:
            return await knowledge_repo.list_entries(
                session,
                readable_by=principal.user_id if principal.role is GlobalRole.POWER else None,
                everything=principal.is_admin,
                tags=tags,
                limit=limit,
                after=after,
            )

    async def update(
        self, principal: Principal, entry_id: uuid.UUID, changes: dict[str, Any]
    ) -> KnowledgeEntry:
        """Change the fields given (``None``: unchanged)."""
        check_reader(principal)
        async with self._sessions.begin() as session:
            entry = await _writable(session, principal, entry_id)
            changed = False
            for name in EDITABLE:
                value = changes.get(name)
                if value is None:
                    continue
                if name == "tags":
                    value = _unique(value)
                if name == "source":
                    value = value or None
                if getattr(entry, name) != value:
                    setattr(entry, name, value)
                    changed = True
            if changed:
                if not principal.is_admin and entry.approved:
                    entry.approved, entry.approved_by, entry.approved_at = False, None, None
                entry.version += 1
                entry.updated_at = utcnow()
                await session.flush()
        if changed:
            await self._changed(entry)
        return entry

    async def delete(self, principal: Principal, entry_id: uuid.UUID) -> None:
        check_reader(principal)
        async with self._sessions.begin() as session:
            entry = await _writable(session, principal, entry_id)
            await knowledge_repo.delete_entry(session, entry)
        await self._deleted(entry_id)

    async def approve(self, principal: Principal, entry_id: uuid.UUID) -> KnowledgeEntry:
        """Approve an entry (admins): users read it from then on. Approving an approved
        entry changes nothing."""
        check_reader(principal)
        check_admin(principal)
        async with self._sessions.begin() as session:
            entry = await knowledge_repo.get_entry(session, entry_id)
            if entry is None:
                raise NotFound("no such entry")
            if entry.approved:
                return entry
            now = utcnow()
            entry.approved, entry.approved_by, entry.approved_at = True, principal.user_id, now
            entry.version += 1  # who may read its passages changed
            entry.updated_at = now
            await session.flush()
        await self._changed(entry)
        return entry

    # --- search -------------------------------------------------------------------------

    async def search(
        self, principal: Principal, query: str, *, tags: Sequence[str], limit: int
    ) -> list[EntryHit]:
        """The entries the caller may read that match ``query`` best, best first, each
        with its best passage."""
        check_reader(principal)
        scope = Scope(
            knowledge=_knowledge_scope(principal),
            owner=str(principal.user_id),
            tags=tags,
            kinds=frozenset({"knowledge"}),
        )
        found = await self._search(query, scope, limit=limit * OVERFETCH)
        best: dict[uuid.UUID, Found] = {}
        for passage in found:
            best.setdefault(uuid.UUID(passage.ref), passage)
        async with read_session(self._sessions) as session:
            entries = await knowledge_repo.get_entries(session, list(best))
        hits = []
        for entry_id, passage in best.items():
            entry = entries.get(entry_id)
            # The database decides: an entry changed since it was indexed is checked again.
            if entry is None or not may_read(principal, entry) or not set(tags) <= set(entry.tags):
                continue
            hits.append(EntryHit(entry, passage.score, passage.text))
        return hits[:limit]

    async def passages(
        self,
        principal: Principal,
        query: str,
        *,
        limit: int,
        documents: Sequence[uuid.UUID] | None = None,
    ) -> list[Passage]:
        """The passages that match ``query`` best among those the caller may read:
        knowledge entries by their role, and the documents they are a member of (only
        ``documents`` of those, when given)."""
        async with read_session(self._sessions) as session:
            titles = await documents_repo.member_document_titles(session, principal.user_id)
        if documents is not None:
            titles = {key: title for key, title in titles.items() if key in set(documents)}
        knowledge = None if principal.role is GlobalRole.GUEST else _knowledge_scope(principal)
        scope = Scope(
            knowledge=knowledge, owner=str(principal.user_id), documents=[str(d) for d in titles]
        )
        found = await self._search(query, scope, limit=limit * OVERFETCH)
        async with read_session(self._sessions) as session:
            entries = await knowledge_repo.get_entries(
                session, [uuid.UUID(p.ref) for p in found if p.kind == "knowledge"]
            )
        passages: list[Passage] = []
        for passage in found:
            ref = uuid.UUID(passage.ref)
            if passage.kind == "knowledge":
                entry = entries.get(ref)
                if knowledge is None or entry is None or not may_read(principal, entry):
                    continue
                passages.append(Passage("knowledge", ref, entry.title, passage.text, passage.score))
            elif passage.kind == "document" and ref in titles:
                passages.append(Passage("document", ref, titles[ref], passage.text, passage.score))
        return passages[:limit]

    async def _search(self, query: str, scope: Scope, *, limit: int) -> list[Found]:
        try:
            return await self._indexer.index.search(query, scope, limit=limit)
        except IndexFailure as exc:
            raise ServiceUnavailable("the search index is unavailable; try again") from exc

    async def reindex(self, principal: Principal) -> Reindexed:
        """Rebuild the index from the database (admins). A reindex asked while one runs
        gets that one's answer: a second would drop what the first has written and
        start over (a client that timed out and asked again would never see one end).
        The rebuild goes on if its caller goes away."""
        check_reader(principal)
        check_admin(principal)
        if self._rebuilding is None:
            self._rebuilding = asyncio.get_running_loop().create_task(self._rebuild())
            self._rebuilding.add_done_callback(self._rebuilt)
        return await asyncio.shield(self._rebuilding)

    async def _rebuild(self) -> Reindexed:
        try:
            entries = await self._indexer.rebuild()
            documents = await self.documents.rebuild()
            passages = await self._indexer.index.store.count()
        except IndexFailure as exc:
            raise ServiceUnavailable("the search index is unavailable; try again") from exc
        return Reindexed(entries=entries, documents=documents, passages=passages)

    def _rebuilt(self, task: asyncio.Task[Reindexed]) -> None:
        if self._rebuilding is task:
            self._rebuilding = None
        error = None if task.cancelled() else task.exception()
        if error is not None:  # its callers have it too, if any are still there
            log.warning("reindex failed: %r", error)

    # --- the index ----------------------------------------------------------------------

    def start(self) -> None:
        """Catch up with what an earlier process left out of the index."""
        self._indexer.start()

    async def close(self) -> None:
        if self._rebuilding is not None:
            self._rebuilding.cancel()
            with contextlib.suppress(BaseException):
                await self._rebuilding
        await self.documents.close()
        await self._indexer.close()
        await self._indexer.index.close()

    async def _changed(self, entry: KnowledgeEntry) -> None:
        # Written before the answer, so that what was just added is found; a failure
        # leaves it to the retries (the change itself is committed).
        await self._indexer.sync(entry.id)

    async def _deleted(self, entry_id: uuid.UUID) -> None:
        await self._indexer.removed(entry_id)


def _knowledge_scope(principal: Principal) -> Literal["all", "approved", "approved_or_own"]:
    if principal.is_admin:
        return "all"
    return "approved_or_own" if principal.role is GlobalRole.POWER else "approved"


async def _readable(
    session: AsyncSession, principal: Principal, entry_id: uuid.UUID
) -> KnowledgeEntry:
    entry = await knowledge_repo.get_entry(session, entry_id)
    if entry is None or not may_read(principal, entry):
        raise NotFound("no such entry")
    return entry


async def _writable(
    session: AsyncSession, principal: Principal, entry_id: uuid.UUID
) -> KnowledgeEntry:
    if principal.role not in (GlobalRole.ADMIN, GlobalRole.POWER):
        raise Forbidden("only power users and admins change knowledge entries")
    entry = await _readable(session, principal, entry_id)
    if not principal.is_admin and entry.owner_id != principal.user_id:
        raise Forbidden("power users change only their own entries")
    return entry


def _unique(tags: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(tags))
