"""The durable form of a Yjs document: the latest snapshot plus the log rows it does
not cover.

A snapshot deletes exactly the log rows it was built from (their ids), not a range:
with several nodes writing, ids are taken at insert, so a row with a lower id can
commit after one with a higher id, and a range would drop it unseen. Every row left in
the log is therefore replayed at load, whatever its id (a row that is also in the
snapshot applies as a no-op: Yjs updates are idempotent).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import cast

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import DocumentSnapshot, DocumentUpdate

# Row ids per DELETE ... IN (...) when a snapshot drops what it covers.
DELETE_CHUNK = 1_000


@dataclass(frozen=True, slots=True)
class StoredDocument:
    snapshot: bytes | None
    # (update id, Yjs v1 update) that the snapshot does not cover, by id.
    updates: list[tuple[int, bytes]]
    # The snapshot's row id (which snapshot a copy was built from), if any.
    snapshot_id: int | None = None

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
    # The log is read before the snapshot: a snapshot committed in between covers
    # the rows it deleted, so nothing is missed (read the other way round, its rows
    # would be gone and the older snapshot read would lack them).
    rows = (
        await session.execute(
            select(DocumentUpdate.id, DocumentUpdate.data)
            .where(DocumentUpdate.document_id == document_id)
            .order_by(DocumentUpdate.id)
        )
    ).all()
    snapshot = await latest_snapshot(session, document_id)
    return StoredDocument(
        snapshot=snapshot.data if snapshot is not None else None,
        updates=[(row.id, row.data) for row in rows],
        snapshot_id=snapshot.id if snapshot is not None else None,
    )


async def latest_snapshot(session: AsyncSession, document_id: uuid.UUID) -> DocumentSnapshot | None:
    snapshot: DocumentSnapshot | None = await session.scalar(
        select(DocumentSnapshot)
        .where(DocumentSnapshot.document_id == document_id)
        .order_by(DocumentSnapshot.last_update_id.desc(), DocumentSnapshot.id.desc())
        .limit(1)
    )
    return snapshot


async def latest_snapshot_ids(
    session: AsyncSession, document_id: uuid.UUID
) -> tuple[int, int] | None:
    """The latest snapshot's row id and ``last_update_id`` (not its data)."""
    row = (
        await session.execute(
            select(DocumentSnapshot.id, DocumentSnapshot.last_update_id)
            .where(DocumentSnapshot.document_id == document_id)
            .order_by(DocumentSnapshot.last_update_id.desc(), DocumentSnapshot.id.desc())
            .limit(1)
        )
    ).first()
    return (int(row[0]), int(row[1])) if row is not None else None


async def update_ids(session: AsyncSession, document_id: uuid.UUID) -> list[int]:
    """The ids of the log rows no snapshot covers, by id."""
    rows = await session.scalars(
        select(DocumentUpdate.id)
        .where(DocumentUpdate.document_id == document_id)
        .order_by(DocumentUpdate.id)
    )
    return list(rows)


async def updates_by_id(
    session: AsyncSession, document_id: uuid.UUID, ids: Collection[int]
) -> list[tuple[int, bytes]]:
    """The log rows of ``ids`` that are still there, by id."""
    found: list[tuple[int, bytes]] = []
    wanted = sorted(ids)
    for start in range(0, len(wanted), DELETE_CHUNK):
        rows = await session.execute(
            select(DocumentUpdate.id, DocumentUpdate.data).where(
                DocumentUpdate.document_id == document_id,
                DocumentUpdate.id.in_(wanted[start : start + DELETE_CHUNK]),
            )
        )
        found.extend((row.id, row.data) for row in rows)
    return sorted(found)


async def lock_for_snapshot(session: AsyncSession, document_id: uuid.UUID) -> None:
    """Hold the document's snapshot lock until the transaction ends, so that snapshots
    of one document are written one after another whatever the nodes. On PostgreSQL a
    transaction-level advisory lock keyed by the document id: nothing else waits for
    it (a row lock on the document would hold up its chat, whose seq counter is an
    UPDATE of that row). SQLite has one writer at a time anyway."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(document_id.bytes[:8], "big", signed=True)
        await session.execute(select(func.pg_advisory_xact_lock(key)))


async def save_snapshot(
    session: AsyncSession,
    document_id: uuid.UUID,
    data: bytes,
    covered: Collection[int],
    *,
    last_update_id: int,
) -> int | None:
    """Store ``data`` as the document, built from the log rows ``covered`` (and the
    snapshot before it), and drop exactly those rows and the older snapshots.

    ``last_update_id`` is the highest row id the snapshot covers, its own or its
    predecessor's. A snapshot never replaces one that covers more (a late writer with an
    older copy would otherwise drop updates it never saw); returns the new snapshot's row
    id, or None if it was not stored.
    """
    newer = await session.scalar(
        select(func.count()).where(
            DocumentSnapshot.document_id == document_id,
            DocumentSnapshot.last_update_id > last_update_id,
        )
    )
    if newer:
        return None
    snapshot = DocumentSnapshot(document_id=document_id, data=data, last_update_id=last_update_id)
    session.add(snapshot)
    await session.flush()
    ids = sorted(covered)
    for start in range(0, len(ids), DELETE_CHUNK):
        await session.execute(
            delete(DocumentUpdate).where(
                DocumentUpdate.document_id == document_id,
                DocumentUpdate.id.in_(ids[start : start + DELETE_CHUNK]),
            )
        )
    await session.execute(
        delete(DocumentSnapshot).where(
            DocumentSnapshot.document_id == document_id, DocumentSnapshot.id != snapshot.id
        )
    )
    return snapshot.id


async def storage_info(session: AsyncSession, document_id: uuid.UUID) -> StorageInfo:
    totals = (
        await session.execute(
            select(
                func.count(), func.coalesce(func.sum(func.length(DocumentUpdate.data)), 0)
            ).where(DocumentUpdate.document_id == document_id)
        )
    ).one()
    # Typed as object by SQLAlchemy 2.1's stubs: both are integers on every backend.
    count, size = cast(tuple[int, int], tuple(totals))
    snapshot = (
        await session.execute(
            select(func.length(DocumentSnapshot.data), DocumentSnapshot.last_update_id)
            .where(DocumentSnapshot.document_id == document_id)
            .order_by(DocumentSnapshot.last_update_id.desc(), DocumentSnapshot.id.desc())
            .limit(1)
        )
    ).first()
    return StorageInfo(
        update_count=int(count),
        update_bytes=int(size),
        snapshot_bytes=int(snapshot[0]) if snapshot else 0,
        snapshot_last_update_id=int(snapshot[1]) if snapshot else None,
    )
