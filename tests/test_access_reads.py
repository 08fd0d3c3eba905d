"""The one-trip reads of a connect and a join (storage/access_reads.py) against what
the ORM reads, on SQLite and PostgreSQL: the same rows, values of the same types."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.access_reads import (
    AccessReads,
    PostgresReads,
    SessionReads,
    SqliteReads,
    access_reads,
)
from storage.db import create_engine, create_sessionmaker
from storage.models import DocumentRole, GlobalRole, User
from storage.repositories import documents as documents_repo
from storage.repositories import users as users_repo


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def reads(engine: AsyncEngine) -> AsyncIterator[AccessReads]:
    reads = access_reads(engine, create_sessionmaker(engine))
    yield reads
    await reads.close()


def typed(rows: list[tuple[object, ...]]) -> list[tuple[tuple[object, type], ...]]:
    """Rows with each value's type beside it, in a stable order."""
    return sorted((tuple((value, type(value)) for value in row) for row in rows), key=repr)


async def test_each_database_gets_its_one_trip_reads(
    engine: AsyncEngine, reads: AccessReads, backend: str
) -> None:
    assert isinstance(reads, SqliteReads if backend == "sqlite" else PostgresReads)


async def test_accounts_and_roles_read_as_the_orm_reads_them(
    engine: AsyncEngine, reads: AccessReads
) -> None:
    sessions = create_sessionmaker(engine)
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        owner, editor, viewer, outsider = [
            await users_repo.create_user(
                session, username=f"u{n}-{uuid.uuid4().hex[:6]}", password_hash=None, role=role
            )
            for n, role in enumerate(
                [GlobalRole.ADMIN, GlobalRole.USER, GlobalRole.GUEST, GlobalRole.POWER]
            )
        ]
        document = await documents_repo.create_document(
            session, title="Plan ✓ 'quoted'", owner_id=owner.id
        )
        await documents_repo.put_member(session, document.id, editor.id, DocumentRole.EDITOR)
        await documents_repo.put_member(session, document.id, viewer.id, DocumentRole.VIEWER)
        # The editor: two sessions revoked lately (one with two rotations), one long ago.
        families = [uuid.uuid4() for _ in range(3)]
        for family in [families[0], families[0], families[1], families[2]]:
            await users_repo.add_refresh_token(
                session,
                token_id=uuid.uuid4(),
                family_id=family,
                user_id=editor.id,
                expires_at=now + timedelta(days=1),
            )
        await users_repo.revoke_family(session, families[0], now - timedelta(minutes=1))
        await users_repo.revoke_family(session, families[1], now - timedelta(seconds=1))
        await users_repo.revoke_family(session, families[2], now - timedelta(days=2))
        # The viewer: disabled, its tokens from a moment ago on refused.
        await session.execute(
            update(User)
            .where(User.id == viewer.id)
            .values(disabled=True, tokens_valid_after=now - timedelta(seconds=5))
        )
    orm = SessionReads(sessions)
    since = now - timedelta(hours=1)
    asked = [owner.id, editor.id, viewer.id, outsider.id, uuid.uuid4()]

    accounts = await reads.accounts(asked, revoked_since=since)
    assert typed(accounts) == typed(await orm.accounts(asked, revoked_since=since))
    by_user: dict[uuid.UUID, set[uuid.UUID | None]] = {}
    for user_id, _name, _role, _disabled, _after, family in accounts:
        by_user.setdefault(user_id, set()).add(family)
    assert by_user == {
        owner.id: {None},
        editor.id: {families[0], families[1]},  # one row per family, not per rotation
        viewer.id: {None},
        outsider.id: {None},
    }
    viewer_row = next(row for row in accounts if row[0] == viewer.id)
    assert viewer_row[2:5] == (GlobalRole.GUEST, True, now - timedelta(seconds=5))

    roles = await reads.member_roles(document.id, asked)
    assert typed(roles) == typed(await orm.member_roles(document.id, asked))
    assert sorted(roles) == sorted(
        [
            (owner.id, "Plan ✓ 'quoted'", DocumentRole.OWNER),
            (editor.id, "Plan ✓ 'quoted'", DocumentRole.EDITOR),
            (viewer.id, "Plan ✓ 'quoted'", DocumentRole.VIEWER),
        ]
    )
    assert await reads.member_roles(uuid.uuid4(), asked) == []
    assert await reads.accounts([], revoked_since=since) == []


async def test_reads_at_once_take_turns_and_see_each_commit(
    engine: AsyncEngine, reads: AccessReads
) -> None:
    sessions = create_sessionmaker(engine)
    async with sessions.begin() as session:
        users = [
            await users_repo.create_user(
                session,
                username=f"t{n}-{uuid.uuid4().hex[:6]}",
                password_hash=None,
                role=GlobalRole.USER,
            )
            for n in range(30)
        ]
    since = datetime.now(UTC)
    answers = await asyncio.gather(
        *(reads.accounts([user.id], revoked_since=since) for user in users)
    )
    assert [[row[0] for row in rows] for rows in answers] == [[user.id] for user in users]
    async with sessions.begin() as session:  # committed after the reads' connection opened
        await session.execute(update(User).where(User.id == users[0].id).values(disabled=True))
    [row] = await reads.accounts([users[0].id], revoked_since=since)
    assert row[3] is True


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_read_whose_connection_was_lost_is_read_again_on_another(
    engine: AsyncEngine, reads: AccessReads
) -> None:
    since = datetime.now(UTC)
    assert await reads.accounts([uuid.uuid4()], revoked_since=since) == []
    async with engine.connect() as connection:  # an administrator ends the reads' session
        ended = await connection.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    assert ended
    # Tried again on a new connection: the join that read it never knew.
    assert await reads.accounts([uuid.uuid4()], revoked_since=since) == []
    assert await reads.member_roles(uuid.uuid4(), [uuid.uuid4()]) == []
