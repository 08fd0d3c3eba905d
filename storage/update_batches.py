"""A batch of one document's Yjs updates appended to its log in one trip to the
database.

LiveDocuments' hot path (app/services/live_documents.py): every update is stored
before it is relayed, so a keystroke's latency includes this write. On a connection
of its own (storage/direct.py) it costs about 50 µs of CPU on SQLite against about
600 through a SQLAlchemy session (measured with a batch of one, the usual batch while
people type). ``crdt.append_update`` does the same through SQLAlchemy, for a database
these do not serve.

The updates get their log ids in the batch's order, each a row of its own (never
merged: see ``LiveDocuments._write_batch``), all in one transaction.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import is_sqlite
from storage.direct import PostgresDirect, SqliteDirect, binders, sqlite_path
from storage.models import DocumentUpdate, utcnow

_UPDATES = DocumentUpdate.metadata.tables[DocumentUpdate.__tablename__]


class UpdateWriter(Protocol):
    async def append(self, document_id: uuid.UUID, updates: Sequence[bytes]) -> list[int]:
        """Store the updates in order; their log ids, in the same order."""
        ...

    async def close(self) -> None: ...


def update_writer(engine: AsyncEngine) -> UpdateWriter | None:
    """The one-trip writer for ``engine``'s database (None: none for it, such as an
    in-memory SQLite database)."""
    if is_sqlite(str(engine.url)):
        path = sqlite_path(engine)
        return SqliteUpdates(path, engine) if path is not None else None
    if engine.url.get_driver_name() == "asyncpg":
        return PostgresUpdates(engine)
    return None


# The ids come from the column's sequence as the rows are inserted, in the ORDER BY's
# order: sorted, they are the updates' ids in the batch's order.
_POSTGRES_APPEND = """
INSERT INTO document_updates (document_id, data, created_at)
SELECT $1, u.data, $3
FROM unnest($2::bytea[]) WITH ORDINALITY AS u(data, ord)
ORDER BY u.ord
RETURNING id
"""


class PostgresUpdates:
    def __init__(self, engine: AsyncEngine) -> None:
        self._direct = PostgresDirect(engine)

    async def append(self, document_id: uuid.UUID, updates: Sequence[bytes]) -> list[int]:
        rows = await self._direct.run(
            lambda driver: driver.fetch(_POSTGRES_APPEND, document_id, list(updates), utcnow())
        )
        return sorted(row["id"] for row in rows)

    async def close(self) -> None:
        await self._direct.close()


_COLUMNS = ("document_id", "data", "created_at")
# The id is the rowid (``lastrowid``): RETURNING cost SQLite 3.40 some 5 µs a row more.
_SQLITE_APPEND = f"INSERT INTO document_updates ({', '.join(_COLUMNS)}) VALUES (?, ?, ?)"


class SqliteUpdates:
    def __init__(self, path: str, engine: AsyncEngine) -> None:
        self._direct = SqliteDirect(path, "update-batches")
        self._convert = binders(_UPDATES, _COLUMNS, engine.dialect)

    async def append(self, document_id: uuid.UUID, updates: Sequence[bytes]) -> list[int]:
        return await self._direct.run(
            lambda connection: self._append(connection, document_id, updates)
        )

    def _append(
        self, connection: sqlite3.Connection, document_id: uuid.UUID, updates: Sequence[bytes]
    ) -> list[int]:
        convert = self._convert
        document, created_at = convert["document_id"](document_id), convert["created_at"](utcnow())
        connection.execute("BEGIN IMMEDIATE")
        try:
            cursor, ids = connection.cursor(), []
            for update in updates:
                cursor.execute(_SQLITE_APPEND, (document, convert["data"](update), created_at))
                assert cursor.lastrowid is not None  # a row of a rowid table
                ids.append(cursor.lastrowid)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return ids

    async def close(self) -> None:
        await self._direct.close()
