"""What a connect and a join read of the database, in one trip each: the accounts of
the users connecting, and their roles in the document they join.

A burst of connects and joins reads these in batches (``BatchedLoads``,
app/services/cache.py), one statement each. Through a SQLAlchemy session a batch cost
far more than its statement (the session, the pool's checkout and ping, the statement's
parameters, the hops to the driver's greenlet or thread): 1,000 users joining one room
took 1,160-1,370 µs of server CPU per join on PostgreSQL that way, 920-1,000 this way
(SQLite: 990-1,130, 710-940). Here, on a connection of their own (storage/direct.py):

- PostgreSQL: asyncpg, one statement with the ids as an array.
- SQLite: stdlib ``sqlite3`` in a thread of its own, the ids as a JSON array (one
  statement text whatever their number); a single SELECT reads one snapshot, beside
  the writers.

Values are written and read through the columns' own SQLAlchemy types, so the rows
are what the ORM's would be. ``SessionReads`` reads the same through SQLAlchemy, for
the databases the others do not serve (an in-memory SQLite database).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from storage.db import is_sqlite, read_session
from storage.direct import PostgresDirect, SqliteDirect, binders, readers, sqlite_path
from storage.models import Document, DocumentMember, DocumentRole, RefreshToken, User
from storage.repositories import documents as documents_repo
from storage.repositories import users as users_repo
from storage.repositories.users import AccountRow

_USERS = User.metadata.tables[User.__tablename__]
_TOKENS = RefreshToken.metadata.tables[RefreshToken.__tablename__]
_MEMBERS = DocumentMember.metadata.tables[DocumentMember.__tablename__]
_DOCUMENTS = Document.metadata.tables[Document.__tablename__]

MemberRow = tuple[uuid.UUID, str, DocumentRole]  # user, the document's title, role


class AccessReads(Protocol):
    async def accounts(
        self, user_ids: Sequence[uuid.UUID], *, revoked_since: datetime
    ) -> list[AccountRow]:
        """Those of ``user_ids`` that exist, with their sessions (refresh-token
        families) revoked after ``revoked_since``: users_repo.account_rows's rows."""
        ...

    async def member_roles(
        self, document_id: uuid.UUID, user_ids: Sequence[uuid.UUID]
    ) -> list[MemberRow]:
        """(user, the document's title, role) for those of ``user_ids`` who are
        members of the document."""
        ...

    async def close(self) -> None: ...


def access_reads(engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> AccessReads:
    """The one-trip reads for ``engine``'s database, or ``SessionReads`` where there
    are none for it."""
    if is_sqlite(str(engine.url)):
        path = sqlite_path(engine)
        if path is not None:
            return SqliteReads(path, engine)
    elif engine.url.get_driver_name() == "asyncpg":
        return PostgresReads(engine)
    return SessionReads(sessions)


# A user with several sessions revoked has a row for each (DISTINCT: a family's
# rotations are revoked together).
_ACCOUNT_COLUMNS = ("id", "username", "role", "disabled", "tokens_valid_after")
_POSTGRES_ACCOUNTS = """
SELECT DISTINCT u.id, u.username, u.role, u.disabled, u.tokens_valid_after, r.family_id
FROM users AS u
LEFT JOIN refresh_tokens AS r ON r.user_id = u.id AND r.revoked_at > $2
WHERE u.id = ANY($1::uuid[])
"""
_POSTGRES_MEMBERS = """
SELECT m.user_id, d.title, m.role
FROM document_members AS m JOIN documents AS d ON d.id = m.document_id
WHERE m.document_id = $1 AND m.user_id = ANY($2::uuid[])
"""
_SQLITE_ACCOUNTS = """
SELECT DISTINCT u.id, u.username, u.role, u.disabled, u.tokens_valid_after, r.family_id
FROM users AS u
LEFT JOIN refresh_tokens AS r ON r.user_id = u.id AND r.revoked_at > ?
WHERE u.id IN (SELECT value FROM json_each(?))
"""
_SQLITE_MEMBERS = """
SELECT m.user_id, d.title, m.role
FROM document_members AS m JOIN documents AS d ON d.id = m.document_id
WHERE m.document_id = ? AND m.user_id IN (SELECT value FROM json_each(?))
"""


class _Rows:
    """The two statements' columns, read as the ORM reads them on one dialect."""

    def __init__(self, engine: AsyncEngine) -> None:
        dialect = engine.dialect
        self._account = [
            *readers(_USERS, _ACCOUNT_COLUMNS, dialect),
            *readers(_TOKENS, ["family_id"], dialect),
        ]
        self._member = [
            *readers(_MEMBERS, ["user_id"], dialect),
            *readers(_DOCUMENTS, ["title"], dialect),
            *readers(_MEMBERS, ["role"], dialect),
        ]

    def accounts(self, rows: Iterable[Sequence[Any]]) -> list[AccountRow]:
        return _read(self._account, rows)

    def members(self, rows: Iterable[Sequence[Any]]) -> list[MemberRow]:
        return _read(self._member, rows)


def _read(columns: list[Callable[[Any], Any]], rows: Iterable[Sequence[Any]]) -> list[Any]:
    return [tuple(read(value) for read, value in zip(columns, row, strict=True)) for row in rows]


# What a read meets on a connection the server ended (a query cancelled by an operator
# included; asyncpg's InternalClientError when the server's goodbye arrives as the query
# starts): the read is tried once more.
_LOST = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
)


class PostgresReads:
    def __init__(self, engine: AsyncEngine) -> None:
        # Its own connection: reads do not wait behind the chat writer's batches.
        self._direct = PostgresDirect(engine)
        self._rows = _Rows(engine)
        self._revoked_at = binders(_TOKENS, ["revoked_at"], engine.dialect)["revoked_at"]

    async def accounts(
        self, user_ids: Sequence[uuid.UUID], *, revoked_since: datetime
    ) -> list[AccountRow]:
        rows = await self._fetch(
            _POSTGRES_ACCOUNTS, list(user_ids), self._revoked_at(revoked_since)
        )
        return self._rows.accounts(rows)

    async def member_roles(
        self, document_id: uuid.UUID, user_ids: Sequence[uuid.UUID]
    ) -> list[MemberRow]:
        rows = await self._fetch(_POSTGRES_MEMBERS, document_id, list(user_ids))
        return self._rows.members(rows)

    async def _fetch(self, statement: str, *arguments: Any) -> list[asyncpg.Record]:
        async def fetch(driver: asyncpg.Connection) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await driver.fetch(statement, *arguments)
            return rows

        try:
            return await self._direct.run(fetch)
        except _LOST:
            # The connection was gone (a restart, a failover, an administrator ending
            # sessions) and is discarded now; a read may be tried again, on a new one.
            return await self._direct.run(fetch)

    async def close(self) -> None:
        await self._direct.close()


class SqliteReads:
    def __init__(self, path: str, engine: AsyncEngine) -> None:
        self._direct = SqliteDirect(path, "access-reads")
        self._rows = _Rows(engine)
        dialect = engine.dialect
        self._user_id = binders(_USERS, ["id"], dialect)["id"]
        self._document_id = binders(_MEMBERS, ["document_id"], dialect)["document_id"]
        self._revoked_at = binders(_TOKENS, ["revoked_at"], dialect)["revoked_at"]

    def _ids(self, user_ids: Sequence[uuid.UUID]) -> str:
        user_id = self._user_id
        return json.dumps([user_id(each) for each in user_ids])

    async def accounts(
        self, user_ids: Sequence[uuid.UUID], *, revoked_since: datetime
    ) -> list[AccountRow]:
        arguments = (self._revoked_at(revoked_since), self._ids(user_ids))
        rows = await self._direct.run(
            lambda connection: _fetch(connection, _SQLITE_ACCOUNTS, arguments)
        )
        return self._rows.accounts(rows)

    async def member_roles(
        self, document_id: uuid.UUID, user_ids: Sequence[uuid.UUID]
    ) -> list[MemberRow]:
        arguments = (self._document_id(document_id), self._ids(user_ids))
        rows = await self._direct.run(
            lambda connection: _fetch(connection, _SQLITE_MEMBERS, arguments)
        )
        return self._rows.members(rows)

    async def close(self) -> None:
        await self._direct.close()


def _fetch(connection: sqlite3.Connection, statement: str, arguments: tuple[Any, ...]) -> list[Any]:
    return connection.execute(statement, arguments).fetchall()


class SessionReads:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def accounts(
        self, user_ids: Sequence[uuid.UUID], *, revoked_since: datetime
    ) -> list[AccountRow]:
        async with read_session(self._sessions) as session:
            return await users_repo.account_rows(session, user_ids, revoked_since=revoked_since)

    async def member_roles(
        self, document_id: uuid.UUID, user_ids: Sequence[uuid.UUID]
    ) -> list[MemberRow]:
        async with read_session(self._sessions) as session:
            return await documents_repo.member_roles(session, document_id, user_ids)

    async def close(self) -> None:
        pass
