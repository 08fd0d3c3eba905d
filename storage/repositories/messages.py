"""Chat messages with a per-document, gapless, monotonic ``seq``."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Row, Select, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from storage.errors import AlreadyExists
from storage.models import AuthorKind, ChatMessage, Document, User


async def find_by_client_msg_id(
    session: AsyncSession, document_id: uuid.UUID, author_id: uuid.UUID, client_msg_id: str
) -> ChatMessage | None:
    return await session.scalar(
        select(ChatMessage).where(
            ChatMessage.document_id == document_id,
            ChatMessage.author_id == author_id,
            ChatMessage.client_msg_id == client_msg_id,
        )
    )


async def append_message(
    session: AsyncSession,
    *,
    document_id: uuid.UUID,
    author_kind: AuthorKind,
    author_id: uuid.UUID | None,
    text: str,
    client_msg_id: str | None = None,
    meta: dict[str, Any] | None = None,
) -> ChatMessage:
    """Insert with the document's next ``seq``.

    The counter bump takes the document row's write lock, so concurrent senders are
    serialised per document and ``seq`` has no gaps. Raises ``AlreadyExists`` when a
    concurrent insert took the same ``client_msg_id``: the caller must roll back
    (the bump must not survive) and read the winner.
    """
    seq = await session.scalar(
        update(Document)
        .where(Document.id == document_id)
        .values(last_message_seq=Document.last_message_seq + 1)
        .returning(Document.last_message_seq)
    )
    if seq is None:
        raise LookupError(f"document {document_id} does not exist")
    message = ChatMessage(
        document_id=document_id,
        seq=seq,
        author_kind=author_kind,
        author_id=author_id,
        client_msg_id=client_msg_id,
        text=text,
        meta=meta or {},
    )
    session.add(message)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise AlreadyExists("client_msg_id already used") from exc
    return message


async def last_seq(session: AsyncSession | AsyncConnection, document_id: uuid.UUID) -> int:
    """The newest ``seq`` handed out in the document (0 before the first message)."""
    seq = await session.scalar(select(Document.last_message_seq).where(Document.id == document_id))
    return int(seq or 0)


# A message's columns and its author's username (None for the assistant or a deleted
# user), as plain rows: the hot reads (history, catch-up) build no ORM objects.
MessageRow = Row[Any]
_ROW_COLUMNS = (
    ChatMessage.id,
    ChatMessage.document_id,
    ChatMessage.seq,
    ChatMessage.author_kind,
    ChatMessage.author_id,
    ChatMessage.client_msg_id,
    ChatMessage.text,
    ChatMessage.meta.label("meta"),  # the column is "metadata"; rows read on a connection too
    ChatMessage.created_at,
    ChatMessage.edited_at,
    ChatMessage.deleted_at,
    User.username,
)


def _with_author() -> Select[Any]:
    return select(*_ROW_COLUMNS).outerjoin(User, User.id == ChatMessage.author_id)


async def by_client_msg_ids(
    session: AsyncSession | AsyncConnection,
    keys: Iterable[tuple[uuid.UUID, uuid.UUID | None, str]],
) -> list[MessageRow]:
    """The stored messages with these (document, author, ``client_msg_id``) keys."""
    key = tuple_(ChatMessage.document_id, ChatMessage.author_id, ChatMessage.client_msg_id)
    return list(await session.execute(_with_author().where(key.in_(list(keys)))))


async def get_message(
    session: AsyncSession, document_id: uuid.UUID, message_id: uuid.UUID
) -> ChatMessage | None:
    message = await session.get(ChatMessage, message_id)
    return message if message is not None and message.document_id == document_id else None


async def messages_after(
    session: AsyncSession, document_id: uuid.UUID, after_seq: int, *, limit: int
) -> list[MessageRow]:
    """Oldest first, ``seq > after_seq``."""
    query = (
        _with_author()
        .where(ChatMessage.document_id == document_id, ChatMessage.seq > after_seq)
        .order_by(ChatMessage.seq)
        .limit(limit)
    )
    return list(await session.execute(query))


async def messages_before(
    session: AsyncSession, document_id: uuid.UUID, before_seq: int | None, *, limit: int
) -> list[MessageRow]:
    """The ``limit`` messages just before ``before_seq`` (newest page when None), oldest first."""
    query = _with_author().where(ChatMessage.document_id == document_id)
    if before_seq is not None:
        query = query.where(ChatMessage.seq < before_seq)
    rows = await session.execute(query.order_by(ChatMessage.seq.desc()).limit(limit))
    return list(reversed(rows.all()))
