"""The durable form of a Yjs document: the latest snapshot plus the updates after it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import DocumentSnapshot, DocumentUpdate


@dataclass(frozen=True, slots=True)
class StoredDocument:
    snapshot: bytes | None
    # (update id, Yjs v1 update) after the snapshot, oldest first.
    updates: list[tuple[int, bytes]]

    @property
    def last_update_id(self) -> int | None:
        return self.updates[-1][0] if self.updates else None


@dataclass(frozen=True, slots=True)
class StorageInfo:
    update_count: int
    update_bytes: int
    snapshot_bytes: int
    snapshot_last_update_id: int | None


async def append_update(session: AsyncSession, document_id: uuid.UUID, data: bytes) -> int:
    row = DocumentUpdate(document_id=document_id, data=data)
    session.add(row)
    await session.flush()
    return row.id


async def delete_update(session: AsyncSession, document_id: uuid.UUID, update_id: int) -> None:
    """Take one update out of the log (one that cannot be applied to the document)."""
    await session.execute(
        delete(DocumentUpdate).where(
            DocumentUpdate.document_id == document_id, DocumentUpdate.id == update_id
        )
    )


async def load(session: AsyncSession, document_id: uuid.UUID) -> StoredDocument:
    snapshot = await session.scalar(
        select(DocumentSnapshot)
        .where(DocumentSnapshot.document_id == document_id)
        .order_by(DocumentSnapshot.last_update_id.desc())
        .limit(1)
    )
    after = snapshot.last_update_id if snapshot is not None else 0
    rows = await session.execute(
        select(DocumentUpdate.id, DocumentUpdate.data)
        .where(DocumentUpdate.document_id == document_id, DocumentUpdate.id > after)
        .order_by(DocumentUpdate.id)
    )
    return StoredDocument(
        snapshot=snapshot.data if snapshot is not None else None,
        updates=[(row.id, row.data) for row in rows],
    )


async def save_snapshot(
    session: AsyncSession, document_id: uuid.UUID, data: bytes, last_update_id: int
) -> bool:
    """Store ``data`` as covering every update up to ``last_update_id`` and drop those.

    A snapshot never replaces one that covers more (a late writer with an older
    copy would otherwise drop updates it never saw); returns whether it was stored.
    """
    newer = await session.scalar(
        select(func.count()).where(
            DocumentSnapshot.document_id == document_id,
            DocumentSnapshot.last_update_id >= last_update_id,
        )
    )
    if newer:
        return False
    session.add(DocumentSnapshot(document_id=document_id, data=data, last_update_id=last_update_id))
    await session.execute(
        delete(DocumentUpdate).where(
            DocumentUpdate.document_id == document_id, DocumentUpdate.id <= last_update_id
        )
    )
    await session.execute(
        delete(DocumentSnapshot).where(
            DocumentSnapshot.document_id == document_id,
            DocumentSnapshot.last_update_id < last_update_id,
        )
    )
    return True


async def storage_info(session: AsyncSession, document_id: uuid.UUID) -> StorageInfo:
    count, size = (
        await session.execute(
            select(
                func.count(), func.coalesce(func.sum(func.length(DocumentUpdate.data)), 0)
            ).where(DocumentUpdate.document_id == document_id)
        )
    ).one()
    snapshot = (
        await session.execute(
            select(func.length(DocumentSnapshot.data), DocumentSnapshot.last_update_id)
            .where(DocumentSnapshot.document_id == document_id)
            .order_by(DocumentSnapshot.last_update_id.desc())
            .limit(1)
        )
    ).first()
    return StorageInfo(
        update_count=int(count),
        update_bytes=int(size),
        snapshot_bytes=int(snapshot[0]) if snapshot else 0,
        snapshot_last_update_id=int(snapshot[1]) if snapshot else None,
    )
