"""Knowledge entries: the rows behind the knowledge base's passages."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Text, and_, cast, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from storage.models import KnowledgeEntry


async def create_entry(
    session: AsyncSession,
    *,
    title: str,
    text: str,
    tags: list[str],
    source: str | None,
    owner_id: uuid.UUID,
    approved_by: uuid.UUID | None,
    now: datetime,
) -> KnowledgeEntry:
    """A new entry; approved at once when ``approved_by`` is given."""
    entry = KnowledgeEntry(
        title=title,
        text=text,
        tags=tags,
        source=source,
        owner_id=owner_id,
        approved=approved_by is not None,
        approved_by=approved_by,
        approved_at=now if approved_by is not None else None,
        version=1,
        indexed_version=0,
        created_at=now,
        updated_at=now,
    )
    session.add(entry)
    await session.flush()
    return entry


async def get_entry(session: AsyncSession, entry_id: uuid.UUID) -> KnowledgeEntry | None:
    return await session.get(KnowledgeEntry, entry_id)


async def get_entries(
    session: AsyncSession, entry_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, KnowledgeEntry]:
    if not entry_ids:
        return {}
    query = select(KnowledgeEntry).where(KnowledgeEntry.id.in_(entry_ids))
    return {entry.id: entry for entry in (await session.scalars(query)).all()}


async def list_entries(
    session: AsyncSession,
    *,
    readable_by: uuid.UUID | None,
    everything: bool,
    tags: Sequence[str] = (),
    limit: int,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> Sequence[KnowledgeEntry]:
    """Newest first. ``everything`` (admins) lists all entries; otherwise the approved
    ones and those owned by ``readable_by``; only those with every one of ``tags``.
    ``after`` is the previous page's last (created_at, id)."""
    query = (
        select(KnowledgeEntry)
        .order_by(KnowledgeEntry.created_at.desc(), KnowledgeEntry.id.desc())
        .limit(limit)
    )
    if not everything:
        visible: ColumnElement[bool] = KnowledgeEntry.approved.is_(True)
        if readable_by is not None:
            visible = or_(visible, KnowledgeEntry.owner_id == readable_by)
        query = query.where(visible)
    for tag in tags:
        # The JSON list's text holds each tag in quotes on both backends; tags are
        # plain words (no quotes or backslashes), and LIKE's wildcards are escaped.
        query = query.where(cast(KnowledgeEntry.tags, Text).contains(f'"{tag}"', autoescape=True))
    if after is not None:
        created_at, entry_id = after
        query = query.where(
            or_(
                KnowledgeEntry.created_at < created_at,
                and_(KnowledgeEntry.created_at == created_at, KnowledgeEntry.id < entry_id),
            )
        )
    return (await session.scalars(query)).all()


async def delete_entry(session: AsyncSession, entry: KnowledgeEntry) -> None:
    await session.delete(entry)
    await session.flush()


async def mark_indexed(session: AsyncSession, entry_id: uuid.UUID, version: int) -> None:
    """Record that the index holds ``version`` of the entry (never going backwards)."""
    await session.execute(
        update(KnowledgeEntry)
        .where(KnowledgeEntry.id == entry_id, KnowledgeEntry.indexed_version < version)
        .values(indexed_version=version, updated_at=KnowledgeEntry.updated_at)
    )


async def stale_entry_ids(session: AsyncSession, *, limit: int) -> Sequence[uuid.UUID]:
    """Entries whose index copy is behind their text (a vector write that failed)."""
    query = (
        select(KnowledgeEntry.id)
        .where(KnowledgeEntry.indexed_version != KnowledgeEntry.version)
        .limit(limit)
    )
    return (await session.scalars(query)).all()


async def all_entry_ids(session: AsyncSession) -> Sequence[uuid.UUID]:
    return (await session.scalars(select(KnowledgeEntry.id))).all()


async def mark_all_stale(session: AsyncSession) -> None:
    """The index was dropped: every entry must be written again."""
    await session.execute(
        update(KnowledgeEntry).values(indexed_version=0, updated_at=KnowledgeEntry.updated_at)
    )
