"""Connections of their own for the hot paths (chat batches, Yjs updates, the reads
of a connect and a join), beside SQLAlchemy's pool.

Through SQLAlchemy a small write costs about half a millisecond to a millisecond of
CPU (a session, its unit of work, begin and commit; on SQLite each a hop to
aiosqlite's thread and back). A writer that sends its statements itself pays a tenth
of that:

- PostgreSQL: the asyncpg connection under one of the engine's pooled connections,
  checked out for good: no checkout and no ping per write. A write that fails
  otherwise than by a constraint refusing a row discards it (the server may be gone,
  or going: an administrator's shutdown is an error the server answers); the next
  write checks out a fresh one.
- SQLite: stdlib ``sqlite3`` on a connection of its own, in a thread of its own: a
  whole transaction is one hop to that thread, and writes take turns there. Values
  are converted by the columns' own SQLAlchemy types (``binders``, ``readers``), so
  rows read back exactly as the ORM wrote them, and read as the ORM reads them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import Table
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.db import configure_sqlite

T = TypeVar("T")


class PostgresDirect:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None
        self._driver: asyncpg.Connection | None = None
        # An asyncpg connection runs one operation at a time, and its users (several
        # documents' writers, say) share this one: they take turns (each batching what
        # waits meanwhile).
        self._turn = asyncio.Lock()

    async def run(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``work`` on the connection (opened on first use), after the work before it."""
        async with self._turn:
            if self._driver is None:
                self._connection = await self._engine.connect()
                raw = await self._connection.get_raw_connection()
                self._driver = raw.driver_connection
            assert self._driver is not None
            try:
                return await work(self._driver)
            except asyncpg.IntegrityConstraintViolationError:
                raise  # a row the database refused: the connection is fine
            except BaseException:
                await self._discard()  # the next work starts on a fresh connection
                raise

    async def _discard(self) -> None:
        """Out of the pool for good: after a failure (the server gone, the work
        cancelled halfway) the connection's state is unknown, and returned to the pool
        it could fail its next user as well."""
        connection, self._connection, self._driver = self._connection, None, None
        if connection is not None:
            await connection.invalidate()

    async def close(self) -> None:
        connection, self._connection, self._driver = self._connection, None, None
        if connection is not None:
            try:
                await connection.close()
            except Exception:  # a broken connection: the pool drops it
                await connection.invalidate()


class SqliteDirect:
    def __init__(self, path: str, name: str) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` on the connection (opened on first use), in its thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._run, work)

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._connection is None:
            self._connection = sqlite3.connect(self._path, check_same_thread=False)
            configure_sqlite(self._connection)
        return work(self._connection)

    async def close(self) -> None:
        def close() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await asyncio.get_running_loop().run_in_executor(self._thread, close)
        self._thread.shutdown(wait=True)


def sqlite_path(engine: AsyncEngine) -> str | None:
    """The file of ``engine``'s SQLite database (None: an in-memory database, which a
    second connection would not see)."""
    database = engine.url.database
    return database if database and database != ":memory:" else None


def binders(
    table: Table, names: Iterable[str], dialect: Dialect
) -> dict[str, Callable[[Any], Any]]:
    """How SQLAlchemy writes each column's values on ``dialect`` (UUIDs as hex on
    SQLite, its datetimes, JSON)."""
    columns = table.c
    converters: dict[str, Callable[[Any], Any]] = {}
    for name in names:
        process = columns[name].type.dialect_impl(dialect).bind_processor(dialect)
        converters[name] = process or _unchanged
    return converters


def readers(table: Table, names: Iterable[str], dialect: Dialect) -> list[Callable[[Any], Any]]:
    """How SQLAlchemy reads each column's values back on ``dialect``, in ``names``'
    order (the other way from ``binders``)."""
    columns = table.c
    return [
        columns[name].type.dialect_impl(dialect).result_processor(dialect, None) or _unchanged
        for name in names
    ]


def _unchanged(value: Any) -> Any:
    return value
