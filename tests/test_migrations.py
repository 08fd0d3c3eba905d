"""Migrations run up, down and up again on both backends, and match the models."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import create_engine
from storage.migrate import current_revision, downgrade, head_revision, is_up_to_date, upgrade
from storage.models import Base
from tests.conftest import sqlite_url


@pytest.fixture
async def empty_engine(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    if backend == "sqlite":
        url = sqlite_url(tmp_path / "empty.sqlite3")
    else:
        make: Callable[[], str] = request.getfixturevalue("make_postgres_database")
        url = make()
    engine = create_engine(url)
    yield engine
    await engine.dispose()


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))


async def test_up_down_up(empty_engine: AsyncEngine) -> None:
    expected = {table.name for table in Base.metadata.sorted_tables}
    assert await current_revision(empty_engine) is None
    assert not await is_up_to_date(empty_engine)

    await upgrade(empty_engine)
    assert await current_revision(empty_engine) == head_revision()
    assert expected <= await table_names(empty_engine)

    await downgrade(empty_engine, "base")
    assert await current_revision(empty_engine) is None
    assert await table_names(empty_engine) <= {"alembic_version"}

    await upgrade(empty_engine)
    assert await is_up_to_date(empty_engine)
    assert expected <= await table_names(empty_engine)


async def test_models_and_migrations_agree(empty_engine: AsyncEngine) -> None:
    """A model change without its revision fails here (like `alembic check`)."""
    await upgrade(empty_engine)

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with empty_engine.connect() as connection:
        assert await connection.run_sync(diff) == []
