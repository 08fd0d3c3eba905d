"""A batch of new chat messages written in one trip to the database.

The chat writer's hot path (app/services/chat_writer.py), on a connection of its own
(storage/direct.py):

- PostgreSQL: one statement, committed on its own: it takes each document's seqs (the
  counter row's lock orders concurrent writers) and inserts the rows.
- SQLite: one transaction in the writer's thread.

A message may carry the usage of the assistant reply it is (``NewUsage``), stored in
the same transaction: a stored reply is paid for.

``insert_in`` does the same through SQLAlchemy, in its caller's transaction, for the
databases the one-trip writers do not serve. All answer the seq each message got; a
message whose document is gone gets none and nothing of it is stored. A constraint that
refuses a row (a ``client_msg_id`` stored already, an author deleted) refuses the whole
batch with ``Conflict``.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg
import orjson
from sqlalchemy import case, insert, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.db import is_sqlite
from storage.direct import PostgresDirect, SqliteDirect, binders, sqlite_path
from storage.models import AiUsage, AuthorKind, ChatMessage, Document
from storage.repositories.usage import NewUsage

_MESSAGES = ChatMessage.metadata.tables[ChatMessage.__tablename__]
_DOCUMENTS = Document.metadata.tables[Document.__tablename__]
_USAGE = AiUsage.metadata.tables[AiUsage.__tablename__]
_USAGE_COLUMNS = tuple(NewUsage.__dataclass_fields__)  # the order every insert lists them in


@dataclass(slots=True)  # not frozen: a frozen one took three times as long to make
class NewMessage:
    id: uuid.UUID
    document_id: uuid.UUID
    author_kind: AuthorKind
    author_id: uuid.UUID | None
    client_msg_id: str | None
    text: str
    meta: dict[str, Any]
    usage: NewUsage | None = None  # stored with the message (an assistant reply's)


class Conflict(Exception):
    """A constraint refused a row of the batch: nothing of it is stored."""


class BatchWriter(Protocol):
    async def insert(
        self, messages: Sequence[NewMessage], created_at: datetime
    ) -> dict[uuid.UUID, int]:
        """Store the messages in order, each created at ``created_at`` (the batch's
        moment); each stored one's seq, by message id."""
        ...

    async def close(self) -> None: ...


def batch_writer(engine: AsyncEngine) -> BatchWriter | None:
    """The one-trip writer for ``engine``'s database (None: none for it, such as an
    in-memory SQLite database that a second connection would not see)."""
    if is_sqlite(str(engine.url)):
        path = sqlite_path(engine)
        return SqliteBatches(path, engine) if path is not None else None
    if engine.url.get_driver_name() == "asyncpg":
        return PostgresBatches(engine)
    return None


# The batch goes as one JSON array of objects, one per message, in order: as arrays
# (one per column, through unnest) asyncpg checked each element against the
# collection ABCs, twice this server's CPU for the JSON. PostgreSQL parses the JSON
# instead, on its own processes (a 350-message statement took 10 ms, not 9.5).
_POSTGRES_INSERT = """
WITH batch AS (
    SELECT * FROM ROWS FROM (
        json_to_recordset($1::json) AS (
            id uuid, document_id uuid, author_kind text, author_id uuid, client_msg_id text,
            text text, meta json
        )
    ) WITH ORDINALITY AS b(id, document_id, author_kind, author_id, client_msg_id, text,
                           meta, ord)
), taken AS (
    UPDATE documents AS d
    SET last_message_seq = d.last_message_seq + c.n
    FROM (SELECT document_id, count(*) AS n FROM batch GROUP BY document_id) AS c
    WHERE d.id = c.document_id
    RETURNING d.id, d.last_message_seq - c.n AS before
)
INSERT INTO chat_messages
    (id, document_id, seq, author_kind, author_id, client_msg_id, text, metadata, created_at)
SELECT b.id, b.document_id,
       t.before + row_number() OVER (PARTITION BY b.document_id ORDER BY b.ord),
       b.author_kind, b.author_id, b.client_msg_id, b.text, b.meta, $2
FROM batch AS b JOIN taken AS t ON t.id = b.document_id
RETURNING id, seq
"""
# The same with the batch's usage rows, their columns in ``_USAGE_COLUMNS``' order (a
# data-modifying WITH runs whether or not the statement reads it): messages and usage,
# one statement, one transaction.
_POSTGRES_INSERT_WITH_USAGE = _POSTGRES_INSERT.replace(
    "\nINSERT INTO chat_messages",
    """, usage AS (
    INSERT INTO ai_usage (
        user_id, document_id, reply_id, model, status, input_tokens, output_tokens,
        cache_creation_input_tokens, cache_read_input_tokens, cost_usd, created_at
    )
    SELECT * FROM unnest(
        $3::uuid[], $4::uuid[], $5::uuid[], $6::text[], $7::text[], $8::int[],
        $9::int[], $10::int[], $11::int[], $12::numeric[], $13::timestamptz[]
    )
)
INSERT INTO chat_messages""",
    1,
)


class PostgresBatches:
    def __init__(self, engine: AsyncEngine) -> None:
        self._direct = PostgresDirect(engine)

    async def insert(
        self, messages: Sequence[NewMessage], created_at: datetime
    ) -> dict[uuid.UUID, int]:
        batch = [
            {
                "id": m.id,
                "document_id": m.document_id,
                "author_kind": m.author_kind,  # orjson writes an enum as its value
                "author_id": m.author_id,
                "client_msg_id": m.client_msg_id,
                "text": m.text,
                "meta": m.meta,
            }
            for m in messages
        ]
        # default: ids read through asyncpg are its own UUID type, which orjson does not
        # know; they are written as text, as orjson writes uuid.UUID.
        batch_json = orjson.dumps(batch, default=str).decode()
        arguments: list[Any] = [batch_json, created_at]
        usage = [m.usage for m in messages if m.usage is not None]
        if usage:
            arguments += [[getattr(u, name) for u in usage] for name in _USAGE_COLUMNS]
        statement = _POSTGRES_INSERT_WITH_USAGE if usage else _POSTGRES_INSERT
        try:
            rows = await self._direct.run(lambda driver: driver.fetch(statement, *arguments))
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise Conflict(str(exc)) from exc
        return {row["id"]: row["seq"] for row in rows}

    async def close(self) -> None:
        await self._direct.close()


_MESSAGE_COLUMNS = (
    "id",
    "document_id",
    "seq",
    "author_kind",
    "author_id",
    "client_msg_id",
    "text",
    "metadata",
    "created_at",
)
_SQLITE_INSERT = (
    f"INSERT INTO chat_messages ({', '.join(_MESSAGE_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _MESSAGE_COLUMNS)})"
)
_SQLITE_USAGE = (
    f"INSERT INTO ai_usage ({', '.join(_USAGE_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _USAGE_COLUMNS)})"
)
# Two statements, not UPDATE ... RETURNING: SQLite 3.40 took three times as long for
# the one (10 documents' counters in a transaction: 194 µs against 71).
_SQLITE_TAKE = "UPDATE documents SET last_message_seq = last_message_seq + ? WHERE id = ?"
_SQLITE_TAKEN = "SELECT last_message_seq FROM documents WHERE id = ?"


class SqliteBatches:
    def __init__(self, path: str, engine: AsyncEngine) -> None:
        self._direct = SqliteDirect(path, "chat-batches")
        dialect = engine.dialect
        self._convert = binders(_MESSAGES, _MESSAGE_COLUMNS, dialect)
        self._document_id = binders(_DOCUMENTS, ["id"], dialect)["id"]
        self._usage = binders(_USAGE, _USAGE_COLUMNS, dialect)
        self._no_metadata = self._convert["metadata"]({})  # most messages' (converted once)

    async def insert(
        self, messages: Sequence[NewMessage], created_at: datetime
    ) -> dict[uuid.UUID, int]:
        return await self._direct.run(
            lambda connection: self._insert(connection, messages, created_at)
        )

    def _insert(
        self, connection: sqlite3.Connection, messages: Sequence[NewMessage], now: datetime
    ) -> dict[uuid.UUID, int]:
        convert = self._convert
        # Once a batch, not once a row (with empty metadata, the two dearest
        # conversions: 4 µs a row).
        created_at = convert["created_at"](now)
        no_meta, meta = self._no_metadata, convert["metadata"]
        counts = Counter(m.document_id for m in messages)
        connection.execute("BEGIN IMMEDIATE")
        try:
            last: dict[uuid.UUID, int] = {}
            for document_id, count in counts.items():
                key = self._document_id(document_id)
                if connection.execute(_SQLITE_TAKE, (count, key)).rowcount:
                    last[document_id] = connection.execute(_SQLITE_TAKEN, (key,)).fetchone()[0]
            numbered = _numbered(messages, counts, last)
            rows = [
                (
                    convert["id"](m.id),
                    convert["document_id"](m.document_id),
                    seq,
                    convert["author_kind"](m.author_kind),
                    convert["author_id"](m.author_id),
                    m.client_msg_id,
                    m.text,
                    meta(m.meta) if m.meta else no_meta,
                    created_at,
                )
                for m, seq in numbered
            ]
            connection.executemany(_SQLITE_INSERT, rows)
            usage = [m.usage for m in messages if m.usage is not None]
            if usage:
                connection.executemany(
                    _SQLITE_USAGE,
                    [
                        tuple(self._usage[name](getattr(u, name)) for name in _USAGE_COLUMNS)
                        for u in usage
                    ],
                )
            connection.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            connection.execute("ROLLBACK")
            raise Conflict(str(exc)) from exc
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return {m.id: seq for m, seq in numbered}

    async def close(self) -> None:
        await self._direct.close()


async def insert_in(
    connection: AsyncConnection, messages: Sequence[NewMessage], created_at: datetime
) -> dict[uuid.UUID, int]:
    """What the one-trip writers do, through SQLAlchemy and in the caller's transaction,
    for the databases they do not serve."""
    counts = Counter(m.document_id for m in messages)
    increment: Any = (
        next(iter(counts.values()))
        if len(counts) == 1
        else case({d: n for d, n in counts.items()}, value=Document.id)
    )
    taken = await connection.execute(
        update(Document)
        .where(Document.id.in_(counts))
        .values(last_message_seq=Document.last_message_seq + increment)
        .returning(Document.id, Document.last_message_seq)
    )
    numbered = _numbered(messages, counts, {document_id: last for document_id, last in taken})
    if numbered:
        await connection.execute(
            insert(_MESSAGES),
            [
                {
                    "id": m.id,
                    "document_id": m.document_id,
                    "seq": seq,
                    "author_kind": m.author_kind,
                    "author_id": m.author_id,
                    "client_msg_id": m.client_msg_id,
                    "text": m.text,
                    "metadata": m.meta,
                    "created_at": created_at,
                }
                for m, seq in numbered
            ],
        )
    usage = [m.usage for m in messages if m.usage is not None]
    if usage:
        await connection.execute(insert(_USAGE), [u.values() for u in usage])
    return {m.id: seq for m, seq in numbered}


def _numbered(
    messages: Sequence[NewMessage], counts: Counter[uuid.UUID], last: dict[uuid.UUID, int]
) -> list[tuple[NewMessage, int]]:
    """Each message whose document took its seqs, with its own: ``last`` is each such
    document's counter after taking ``counts`` of them, so they run up to it in the
    batch's order. A document missing from ``last`` is gone: its messages get none."""
    next_seq = {document_id: seq - counts[document_id] + 1 for document_id, seq in last.items()}
    numbered = []
    for message in messages:
        seq = next_seq.get(message.document_id)
        if seq is not None:
            next_seq[message.document_id] = seq + 1
            numbered.append((message, seq))
    return numbered
