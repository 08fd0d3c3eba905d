"""Documents and their members."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Document, DocumentMember, DocumentRole, User


async def create_document(session: AsyncSession, *, title: str, owner_id: uuid.UUID) -> Document:
    document = Document(title=title, owner_id=owner_id, last_message_seq=0)
    session.add(document)
    await session.flush()
    session.add(DocumentMember(document_id=document.id, user_id=owner_id, role=DocumentRole.OWNER))
    await session.flush()
    return document


async def count_owned(session: AsyncSession, owner_id: uuid.UUID) -> int:
    query = select(func.count()).select_from(Document).where(Document.owner_id == owner_id)
    return (await session.execute(query)).scalar_one()


async def get_document(session: AsyncSession, document_id: uuid.UUID) -> Document | None:
    return await session.get(Document, document_id)


async def get_document_for_member(
    session: AsyncSession, document_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[Document, DocumentRole] | None:
    """The document and the user's role in it, or None when not a member."""
    query = (
        select(Document, DocumentMember.role)
        .join(DocumentMember, DocumentMember.document_id == Document.id)
        .where(Document.id == document_id, DocumentMember.user_id == user_id)
    )
    row = (await session.execute(query)).first()
    return (row[0], row[1]) if row else None


async def member_roles(
    session: AsyncSession, document_id: uuid.UUID, user_ids: Sequence[uuid.UUID]
) -> list[tuple[uuid.UUID, str, DocumentRole]]:
    """(user, the document's title, role) for those of ``user_ids`` who are members
    (plain rows: many joins at once read these)."""
    query = (
        select(DocumentMember.user_id, Document.title, DocumentMember.role)
        .join(Document, Document.id == DocumentMember.document_id)
        .where(DocumentMember.document_id == document_id, DocumentMember.user_id.in_(user_ids))
    )
    return [(user_id, title, role) for user_id, title, role in await session.execute(query)]


async def list_documents_for_user(
    session: AsyncSession,
    user_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> Sequence[tuple[Document, DocumentRole]]:
    """Newest first; ``after`` is the (created_at, id) of the previous page's last row."""
    query = (
        select(Document, DocumentMember.role)
        .join(DocumentMember, DocumentMember.document_id == Document.id)
        .where(DocumentMember.user_id == user_id)
        .order_by(Document.created_at.desc(), Document.id.desc())
        .limit(limit)
    )
    if after is not None:
        created_at, document_id = after
        query = query.where(
            or_(
                Document.created_at < created_at,
                and_(Document.created_at == created_at, Document.id < document_id),
            )
        )
    return [(row[0], row[1]) for row in (await session.execute(query)).all()]


async def delete_document(session: AsyncSession, document: Document) -> None:
    await session.delete(document)
    await session.flush()


async def list_members(
    session: AsyncSession, document_id: uuid.UUID
) -> Sequence[tuple[DocumentMember, User]]:
    query = (
        select(DocumentMember, User)
        .join(User, User.id == DocumentMember.user_id)
        .where(DocumentMember.document_id == document_id)
        .order_by(DocumentMember.created_at, User.username)
    )
    return [(row[0], row[1]) for row in (await session.execute(query)).all()]


async def get_member(
    session: AsyncSession, document_id: uuid.UUID, user_id: uuid.UUID
) -> DocumentMember | None:
    return await session.get(DocumentMember, (document_id, user_id))


async def put_member(
    session: AsyncSession, document_id: uuid.UUID, user_id: uuid.UUID, role: DocumentRole
) -> tuple[DocumentMember, bool]:
    """Add or change a member; returns the row and whether it was created."""
    member = await get_member(session, document_id, user_id)
    if member is None:
        member = DocumentMember(document_id=document_id, user_id=user_id, role=role)
        session.add(member)
        await session.flush()
        return member, True
    member.role = role
    await session.flush()
    return member, False


async def remove_member(session: AsyncSession, document_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    result = await session.execute(
        delete(DocumentMember).where(
            DocumentMember.document_id == document_id, DocumentMember.user_id == user_id
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def member_document_titles(session: AsyncSession, user_id: uuid.UUID) -> dict[uuid.UUID, str]:
    """The documents the user is a member of, with their titles."""
    query = (
        select(Document.id, Document.title)
        .join(DocumentMember, DocumentMember.document_id == Document.id)
        .where(DocumentMember.user_id == user_id)
    )
    return {document_id: title for document_id, title in await session.execute(query)}


async def all_document_ids(session: AsyncSession) -> Sequence[uuid.UUID]:
    return (await session.scalars(select(Document.id))).all()
