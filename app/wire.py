"""Wire shapes shared by REST and Socket.IO, and the names of server-sent events."""

from __future__ import annotations

import enum
import functools
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, TypeAdapter

from storage.models import AuthorKind, ChatMessage
from storage.repositories.messages import MessageRow

# The largest seq a client may name (a BIGINT column; past it the database driver fails).
MAX_SEQ = 2**63 - 1
# Text without U+0000: PostgreSQL cannot store it (a failure there, stored on SQLite),
# so it is refused on both.
NO_NUL = r"^[^\x00]*$"


class ServerEvent(enum.StrEnum):
    """Events the server emits on the default namespace."""

    CHAT_MESSAGE = "chat:message"
    CHAT_EDITED = "chat:edited"
    CHAT_DELETED = "chat:deleted"
    PRESENCE_CHANGED = "presence:changed"
    PRESENCE_STATE = "presence:state"
    TYPING = "typing"
    ROOM_ROLE = "room:role"
    ROOM_REMOVED = "room:removed"
    ROOM_RESYNC = "room:resync"
    AUTH_EXPIRING = "auth:expiring"
    SESSION_ENDED = "session:ended"
    AI_STARTED = "ai:started"
    AI_CHUNK = "ai:chunk"
    AI_DONE = "ai:done"
    AI_ERROR = "ai:error"
    ERROR = "error"


class Author(BaseModel):
    kind: AuthorKind
    id: uuid.UUID | None
    username: str | None


class MessageOut(BaseModel):
    id: uuid.UUID
    document_id: uuid.UUID
    seq: int
    author: Author
    client_msg_id: str | None
    text: str
    metadata: dict[str, Any]
    created_at: datetime
    edited_at: datetime | None
    deleted: bool

    @classmethod
    def of_row(cls, row: MessageRow) -> MessageOut:
        """From a history read's row (``storage.repositories.messages.MessageRow``:
        the message's columns and its author's username)."""
        return cls.of(row, row.username)

    @classmethod
    def of(cls, message: ChatMessage | MessageRow, username: str | None) -> MessageOut:
        return cls(
            id=message.id,
            document_id=message.document_id,
            seq=message.seq,
            author=Author(kind=message.author_kind, id=message.author_id, username=username),
            client_msg_id=message.client_msg_id,
            text=message.text,
            metadata=message.meta,
            created_at=message.created_at,
            edited_at=message.edited_at,
            deleted=message.deleted_at is not None,
        )


class MessagePage(BaseModel):
    items: list[MessageOut]
    has_more: bool


_DATETIME = TypeAdapter(datetime)


# The text of ids that recur in what the server sends (documents, users): made once
# for many messages, where str(UUID) cost a microsecond each time.
id_text: Callable[[uuid.UUID], str] = functools.lru_cache(maxsize=16_384)(str)


def iso(moment: datetime) -> str:
    """A timestamp as REST and model payloads write it (ISO 8601, UTC as Z)."""
    return str(_DATETIME.dump_python(moment, mode="json"))


def message_data(row: MessageRow) -> dict[str, Any]:
    """``dump(MessageOut.of_row(row))``, built without the model: the hot reads (a
    join's catch-up, ``chat:history``, the cluster's gap reads) send rows as they are
    read, and a model per row cost twice what the dict does (tests/test_wire.py pins
    the two equal)."""
    return new_message_data(
        row.id,
        row.document_id,
        row.seq,
        row.author_kind,
        row.author_id,
        row.username,
        row.client_msg_id,
        row.text,
        row.meta,
        iso(row.created_at),
        edited_at=None if row.edited_at is None else iso(row.edited_at),
        deleted=row.deleted_at is not None,
    )


def new_message_data(
    id: uuid.UUID,
    document_id: uuid.UUID,
    seq: int,
    author_kind: AuthorKind,
    author_id: uuid.UUID | None,
    username: str | None,
    client_msg_id: str | None,
    text: str,
    meta: dict[str, Any],
    created_at: str,
    *,
    edited_at: str | None = None,
    deleted: bool = False,
) -> dict[str, Any]:
    """A message as the wire has it, from its parts (timestamps already ``iso``: the
    chat writer formats its batch's one timestamp once)."""
    return {
        "id": str(id),
        "document_id": id_text(document_id),
        "seq": seq,
        "author": {
            "kind": str(author_kind),  # its value, without the enum property's two calls
            "id": None if author_id is None else id_text(author_id),
            "username": username,
        },
        "client_msg_id": client_msg_id,
        "text": text,
        "metadata": meta,
        "created_at": created_at,
        "edited_at": edited_at,
        "deleted": deleted,
    }


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON-ready dict (UUIDs and datetimes as strings) for Socket.IO payloads."""
    return model.model_dump(mode="json")
