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

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.principal import Principal
from app.errors import Forbidden, NotFound
from storage.db import read_session
from storage.models import GlobalRole, KnowledgeEntry, utcnow
from storage.repositories import knowledge as knowledge_repo

EDITABLE = ("title", "text", "tags", "source")


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
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

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

    async def list(
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

    # --- the index (none yet) -----------------------------------------------------------

    async def _changed(self, entry: KnowledgeEntry) -> None:
        pass

    async def _deleted(self, entry_id: uuid.UUID) -> None:
        pass


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
