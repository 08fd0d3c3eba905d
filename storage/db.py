"""The async engine and session factory, one of each per process."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> AsyncEngine:
    """An engine for ``url``; SQLite gets foreign keys, WAL and a busy timeout."""
    if is_sqlite(url):
        engine = create_async_engine(url, echo=echo)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_async_engine(
        url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    configure_sqlite(dbapi_connection)


def configure_sqlite(dbapi_connection: Any) -> None:
    """What every connection to the SQLite database needs (the engine's, and the chat
    writer's own)."""
    # SQLite ignores ON DELETE CASCADE without this pragma, on every connection.
    # WAL lets readers proceed while one writer commits; busy_timeout makes a
    # second writer wait for the lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # A checkpoint (the WAL's pages copied into the database, both files synced) once
    # the WAL holds 4,000 pages, not SQLite's 1,000: a batch of chat messages in several
    # rooms dirties some 20 pages, so at 1,000 a busy server checkpointed every few
    # dozen commits, copying the same hot index pages each time. 10 rooms of one sender
    # each (the chat scenario, servers taking turns, 6 pairs): 16% more messages a
    # second, 12% less CPU each; 4,000 and 20,000 did alike, 2,000 14% more CPU than
    # 4,000. The price is a longer wait for the commit that checkpoints (the writer's
    # thread runs it): on this machine's disk up to 25-35 ms rather than 10-15, and
    # the chat scenario's ack p99 at 1,000 messages/s went from 12.7 ms to 15-25. A
    # checkpoint on a thread of its own would not wait for the writer, but neither
    # could it reset a WAL that the writer never stops appending to: the WAL grew until
    # a writer checkpointed it, and waited longer still.
    cursor.execute("PRAGMA wal_autocheckpoint=4000")
    cursor.close()
    # Take BEGIN out of the driver's hands (it would only begin at the first write)...
    dbapi_connection.isolation_level = None


def _sqlite_begin_immediate(connection: Connection) -> None:
    # ...and take the write lock at the start of every unit of work that may write.
    # Otherwise a transaction that reads and then writes (a refresh-token rotation, a
    # role change) can act on a stale read: SQLite has no SELECT ... FOR UPDATE. A
    # unit that only reads (read_session) begins without it: WAL gives it a
    # consistent snapshot beside the writer, instead of a place in the writers' queue.
    if connection.get_execution_options().get(READ_ONLY):
        connection.exec_driver_sql("BEGIN")
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


READ_ONLY = "roomserver_read_only"


def read_session(sessions: async_sessionmaker[AsyncSession]) -> AsyncSession:
    """A session for a unit of work that only reads (``async with read_session(s) as
    session``); ``sessions.begin()`` is for units that write.

    On SQLite it does not wait for the write lock; on PostgreSQL its transaction is
    ``READ ONLY``, so a write that slipped into a read path fails in the tests.
    """
    return sessions(execution_options={READ_ONLY: True, "postgresql_readonly": True})
