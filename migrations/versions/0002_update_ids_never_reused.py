"""document update ids are never reused on SQLite

A snapshot records the newest update id it covers; loading reads the updates after
it. SQLite's plain INTEGER PRIMARY KEY hands out max(id) + 1, so once compaction
deleted the newest rows, new updates got ids the snapshot claims to cover and were
skipped. AUTOINCREMENT keeps ids increasing for ever (PostgreSQL's identity
already does).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _recreate(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "document_updates",
        recreate="always",
        table_kwargs={"sqlite_autoincrement": autoincrement},
    ):
        pass


def upgrade() -> None:
    _recreate(True)


def downgrade() -> None:
    _recreate(False)
