"""Repositories on SQLite and PostgreSQL: the guarantees later features build on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pycrdt
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.db import create_engine, create_sessionmaker, read_session
from storage.direct import SqliteDirect
from storage.errors import AlreadyExists
from storage.models import AuthorKind, ChatMessage, DocumentMember, DocumentUpdate, GlobalRole
from storage.repositories import crdt, messages, usage
from storage.repositories import documents as documents_repo
from storage.repositories import users as users_repo
from tests.helpers import eventually
from tests.test_yjs_properties import clocks

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Sessions]:
    engine = create_engine(database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def make_document(sessions: Sessions) -> tuple[uuid.UUID, uuid.UUID]:
    async with sessions.begin() as session:
        user = await users_repo.create_user(
            session, username=f"u{uuid.uuid4().hex[:8]}", password_hash="x", role=GlobalRole.USER
        )
        document = await documents_repo.create_document(session, title="t", owner_id=user.id)
        return user.id, document.id


async def send(
    sessions: Sessions, document_id: uuid.UUID, author_id: uuid.UUID, text: str, cid: str | None
) -> ChatMessage:
    async with sessions.begin() as session:
        return await messages.append_message(
            session,
            document_id=document_id,
            author_kind=AuthorKind.USER,
            author_id=author_id,
            text=text,
            client_msg_id=cid,
        )


async def test_duplicate_username_is_already_exists(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        await users_repo.create_user(
            session, username="a", password_hash=None, role=GlobalRole.USER
        )
        with pytest.raises(AlreadyExists):
            await users_repo.create_user(
                session, username="a", password_hash=None, role=GlobalRole.USER
            )


async def test_seq_is_gapless_and_survives_a_duplicate_client_msg_id(sessions: Sessions) -> None:
    author, document = await make_document(sessions)
    first = await send(sessions, document, author, "one", "c1")
    with pytest.raises(AlreadyExists):
        await send(sessions, document, author, "one again", "c1")
    second = await send(sessions, document, author, "two", "c2")
    assert (first.seq, second.seq) == (1, 2)  # the refused insert left no hole
    async with sessions() as session:
        found = await messages.find_by_client_msg_id(session, document, author, "c1")
    assert found is not None and found.id == first.id and found.text == "one"


async def test_concurrent_appends_get_distinct_consecutive_seqs(sessions: Sessions) -> None:
    author, document = await make_document(sessions)
    sent = await asyncio.gather(
        *(send(sessions, document, author, f"m{i}", f"c{i}") for i in range(20))
    )
    assert sorted(message.seq for message in sent) == list(range(1, 21))


async def test_history_pages_both_ways(sessions: Sessions) -> None:
    author, document = await make_document(sessions)
    async with sessions() as session:
        found = await users_repo.get_user(session, author)
        assert found is not None
        author_name = found.username
    for i in range(7):
        await send(sessions, document, author, f"m{i + 1}", None)
    async with sessions() as session:
        newest = await messages.messages_before(session, document, None, limit=3)
        older = await messages.messages_before(session, document, newest[0].seq, limit=3)
        after = await messages.messages_after(session, document, 5, limit=10)
    assert [m.seq for m in newest] == [5, 6, 7]
    assert [m.seq for m in older] == [2, 3, 4]
    assert [m.text for m in after] == ["m6", "m7"]
    assert {m.username for m in after} == {author_name}


def yjs_update(doc: pycrdt.Doc, text: str) -> bytes:
    before = doc.get_state()
    # Append without an index: pycrdt counts UTF-8 bytes, Python code points.
    body = doc.get("body", type=pycrdt.Text)
    body += text
    return doc.get_update(before)


async def test_crdt_log_and_snapshot_rebuild_the_same_document(sessions: Sessions) -> None:
    _, document = await make_document(sessions)
    source = pycrdt.Doc()
    ids = []
    async with sessions.begin() as session:
        for word in ("hello", " wörld", " 🌍"):
            ids.append(await crdt.append_update(session, document, yjs_update(source, word)))
    assert ids == sorted(ids)

    async with sessions() as session:
        stored = await crdt.load(session, document)
    assert stored.snapshot is None and stored.last_update_id == ids[-1]

    async with sessions.begin() as session:
        await crdt.save_snapshot(
            session, document, source.get_update(), ids[:2], last_update_id=ids[1]
        )
        later = await crdt.append_update(session, document, yjs_update(source, "!"))
    async with sessions() as session:
        stored = await crdt.load(session, document)
        info = await crdt.storage_info(session, document)
    # The snapshot claims updates up to ids[1]; only later ones remain in the log.
    assert [update_id for update_id, _ in stored.updates] == [ids[2], later]
    assert info.update_count == 2 and info.snapshot_last_update_id == ids[1]
    assert info.snapshot_bytes > 0

    rebuilt = pycrdt.Doc()
    assert stored.snapshot is not None
    for update in [stored.snapshot, *(data for _, data in stored.updates)]:
        rebuilt.apply_update(update)
    assert str(rebuilt.get("body", type=pycrdt.Text)) == "hello wörld 🌍!"


async def test_deleting_a_document_cascades(sessions: Sessions) -> None:
    author, document = await make_document(sessions)
    await send(sessions, document, author, "hi", None)
    async with sessions.begin() as session:
        await crdt.append_update(session, document, b"\x00\x00")
    async with sessions.begin() as session:
        found = await documents_repo.get_document(session, document)
        assert found is not None
        await documents_repo.delete_document(session, found)
    async with sessions() as session:
        for model in (ChatMessage, DocumentUpdate, DocumentMember):
            count = await session.scalar(select(func.count()).select_from(model))
            assert count == 0, model.__name__


async def test_usage_totals(sessions: Sessions) -> None:
    author, document = await make_document(sessions)
    async with sessions.begin() as session:
        for tokens in (100, 250):
            await usage.record_usage(
                session,
                usage.NewUsage(
                    user_id=author,
                    document_id=document,
                    reply_id=uuid.uuid4(),
                    model="claude",
                    status="completed",
                    input_tokens=tokens,
                    output_tokens=10,
                    cache_creation_input_tokens=0,
                    cache_read_input_tokens=5,
                    cost_usd=Decimal("0.0015"),
                    created_at=datetime.now(UTC),
                ),
            )
    since = datetime.now(UTC) - timedelta(hours=1)
    async with sessions() as session:
        assert await usage.tokens_used_since(session, author, since) == 370
        assert await usage.tokens_used_since(session, author, datetime.now(UTC) + timedelta(1)) == 0
        [totals] = await usage.totals_by_user(session, since=since)
    assert (totals.user_id, totals.replies, totals.input_tokens) == (author, 2, 350)
    assert totals.cache_read_input_tokens == 10
    assert totals.cost_usd == Decimal("0.003")


async def test_update_ids_keep_growing_after_compaction(sessions: Sessions) -> None:
    """A snapshot covers "every update up to id N": a later update must never get an
    id <= N, even after compaction deleted every row (SQLite reused them before 0002)."""
    _, document = await make_document(sessions)
    source = pycrdt.Doc()
    async with sessions.begin() as session:
        first = await crdt.append_update(session, document, yjs_update(source, "a"))
        await crdt.save_snapshot(
            session, document, source.get_update(), [first], last_update_id=first
        )
    async with sessions.begin() as session:
        later = await crdt.append_update(session, document, yjs_update(source, "b"))
    assert later > first
    async with sessions() as session:
        stored = await crdt.load(session, document)
    assert [update_id for update_id, _ in stored.updates] == [later]


async def test_an_older_snapshot_never_replaces_a_newer_one(sessions: Sessions) -> None:
    _, document = await make_document(sessions)
    source = pycrdt.Doc()
    async with sessions.begin() as session:
        first = await crdt.append_update(session, document, yjs_update(source, "a"))
        old_copy = source.get_update()
        second = await crdt.append_update(session, document, yjs_update(source, "b"))
        both = [first, second]
        assert await crdt.save_snapshot(
            session, document, source.get_update(), both, last_update_id=second
        )
        assert not await crdt.save_snapshot(
            session, document, old_copy, [first], last_update_id=first
        )
    async with sessions() as session:
        stored = await crdt.load(session, document)
    rebuilt = pycrdt.Doc()
    assert stored.snapshot is not None
    rebuilt.apply_update(stored.snapshot)
    assert str(rebuilt.get("body", type=pycrdt.Text)) == "ab"


async def test_a_snapshot_drops_exactly_the_rows_it_covers(sessions: Sessions) -> None:
    """Two nodes write one document: a row with a lower id can commit after a higher
    one that a snapshot covered. The snapshot deletes its rows by id, not up to an id,
    so the late row stays in the log and a load replays it after the snapshot."""
    _, document = await make_document(sessions)
    source, elsewhere = pycrdt.Doc(), pycrdt.Doc()
    updates = [yjs_update(source, "a"), yjs_update(elsewhere, "b"), yjs_update(source, "c")]
    async with sessions.begin() as session:
        ids = [await crdt.append_update(session, document, update) for update in updates]
    late = ids[1]  # as if committed after the snapshot read the log: not in the copy
    copy = pycrdt.Doc()
    async with sessions() as session:
        stored = await crdt.load(session, document)
    for update_id, data in stored.updates:
        if update_id != late:
            copy.apply_update(data)
    async with sessions.begin() as session:
        snapshot_id = await crdt.save_snapshot(
            session, document, copy.get_update(), [ids[0], ids[2]], last_update_id=ids[2]
        )
    async with sessions() as session:
        stored = await crdt.load(session, document)
        assert await crdt.latest_snapshot_ids(session, document) == (snapshot_id, ids[2])
    assert [update_id for update_id, _ in stored.updates] == [late]
    assert stored.snapshot is not None and stored.snapshot_id == snapshot_id
    rebuilt = pycrdt.Doc()
    for data in [stored.snapshot, *(data for _, data in stored.updates)]:
        rebuilt.apply_update(data)
    whole = pycrdt.Doc()
    for update in updates:
        whole.apply_update(update)
    assert clocks(rebuilt.get_state()) == clocks(whole.get_state())
    assert sorted(str(rebuilt.get("body", type=pycrdt.Text))) == ["a", "b", "c"]
    # The next snapshot, from a copy that caught up, covers the late row with the same
    # last_update_id as the one it replaces (which it holds), and replaces it.
    copy.apply_update(stored.updates[0][1])
    async with sessions.begin() as session:
        newer = await crdt.save_snapshot(
            session, document, copy.get_update(), [late], last_update_id=ids[2]
        )
    async with sessions() as session:
        stored = await crdt.load(session, document)
    assert newer is not None and stored.snapshot_id == newer and stored.updates == []


async def test_snapshots_of_one_document_take_turns(sessions: Sessions, backend: str) -> None:
    """On PostgreSQL a second snapshot transaction of the document waits for the first
    (an advisory lock), while another document's and the document's chat do not."""
    if backend != "postgres":
        pytest.skip("SQLite has one writer at a time: nothing to take turns")
    author, document = await make_document(sessions)
    _, other = await make_document(sessions)
    async with sessions.begin() as first:
        await crdt.lock_for_snapshot(first, document)

        async def second() -> None:
            async with sessions.begin() as session:
                await crdt.lock_for_snapshot(session, document)

        waiting = asyncio.ensure_future(second())

        async def waits() -> None:
            async with sessions() as session:
                count = await session.scalar(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT "
                        "granted AND database = (SELECT oid FROM pg_database WHERE datname = "
                        "current_database())"
                    )
                )
            assert count == 1

        await eventually(waits)
        async with sessions.begin() as session:  # another document: no wait
            await crdt.lock_for_snapshot(session, other)
        await send(sessions, document, author, "chat goes on", None)
        assert not waiting.done()
    await asyncio.wait_for(waiting, 10)


async def test_a_read_session_reads_beside_a_writer_and_postgres_refuses_its_writes(
    sessions: Sessions, backend: str
) -> None:
    user_id, document_id = await make_document(sessions)
    await send(sessions, document_id, user_id, "first", None)
    async with sessions.begin() as writer:
        # The writer holds SQLite's write lock until it commits; a reader does not
        # wait for it, and sees the last committed state.
        await messages.append_message(
            writer,
            document_id=document_id,
            author_kind=AuthorKind.USER,
            author_id=user_id,
            text="second",
        )
        async with read_session(sessions) as reader:
            count = select(func.count()).select_from(ChatMessage)
            assert await asyncio.wait_for(reader.scalar(count), 5) == 1
    if backend == "postgres":  # SQLite has no read-only transactions to refuse it
        async with read_session(sessions) as reader:
            with pytest.raises(DBAPIError, match="read-only transaction"):
                await send_in(reader, document_id, user_id)


async def send_in(session: AsyncSession, document_id: uuid.UUID, author_id: uuid.UUID) -> None:
    await messages.append_message(
        session, document_id=document_id, author_kind=AuthorKind.USER, author_id=author_id, text="x"
    )
    await session.flush()


async def test_sqlite_connections_checkpoint_every_4000_pages(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    try:
        async with engine.connect() as connection:
            pages = await connection.scalar(text("PRAGMA wal_autocheckpoint"))
            assert await connection.scalar(text("PRAGMA journal_mode")) == "wal"
    finally:
        await engine.dispose()
    assert pages == 4000
    direct = SqliteDirect(str(tmp_path / "db.sqlite"), "test")  # the chat writer's kind
    try:
        assert (
            await direct.run(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 4000
        )
    finally:
        await direct.close()
