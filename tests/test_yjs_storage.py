"""Yjs documents in storage: every update in the log before it is relayed, debounced
snapshots, one load however many open it, unloading, REST access to the content, and
shutdown (real SQLite and PostgreSQL; the protocol itself: test_yjs.py)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import pycrdt
import pytest

from app.keys import ENGINE, SESSIONS
from storage.db import read_session
from storage.repositories import crdt as crdt_repo
from storage.update_batches import update_writer
from tests.conftest import AppFactory, DocumentFactory, OpenDocumentOn
from tests.helpers import Api, User, equal, eventually, truthy
from tests.yjs_support import (
    append,
    codes,
    content_url,
    equal_async,
    live_documents,
    storage,
    stored_text,
    uuid_of,
)

# --- storage: log, snapshots, loading, unloading -------------------------------------


async def test_updates_are_stored_before_they_are_relayed(
    api: Api, open_document: DocumentFactory
) -> None:
    ann, ben, doc = await api.room("editor")
    a = await open_document(ann, doc["id"])
    b = await open_document(ben, doc["id"])
    seen: list[int] = []

    def record(update: bytes) -> None:
        # At the moment an update reaches another client it is in the log.
        seen.append(1)

    b.sio.on(
        "sync-update",
        lambda update: (record(update), b._on_sync_update(update)),
        namespace=b.namespace,
    )
    append(a, "durable")
    await eventually(lambda: equal(b.text, "durable"))
    info = await storage(api, ann, doc)
    assert info["update_count"] >= 1 or info["snapshot_bytes"] > 0
    assert seen


async def test_snapshots_are_debounced_with_a_maximum_delay(
    start_app: AppFactory, open_document_on: OpenDocumentOn
) -> None:
    client = await start_app(yjs_snapshot_debounce_seconds=1.0, yjs_snapshot_max_delay_seconds=0.5)
    api = Api(client)
    ann, _, doc = await api.room("editor")
    a = await open_document_on(client, ann, doc["id"])
    compacted_while_typing = False
    for n in range(25):  # an edit every 0.1 s: never quiet for the 1 s debounce
        append(a, f"{n} ")
        await asyncio.sleep(0.1)
        info = await storage(api, ann, doc)
        compacted_while_typing |= info["snapshot_bytes"] > 0
    assert compacted_while_typing  # the maximum delay forced one
    await eventually(lambda: equal_async(storage_count(api, ann, doc), 0), timeout=10)
    assert await stored_text(api, ann, doc) == "".join(f"{n} " for n in range(25))


async def storage_count(api: Api, user: User, doc: dict[str, Any]) -> int:
    return int((await storage(api, user, doc))["update_count"])


async def test_a_snapshot_never_runs_while_a_batch_is_stored_and_applied(
    start_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot reads the log and the copy as one. Run between a batch's commit and
    its application here, its catch-up applied the batch itself, an update that cannot
    be applied included while the writer took it back, and could write a half-applied
    copy (tests/test_fuzz_yjs.py's kill test caught the first)."""
    api = Api(await start_app(yjs_snapshot_debounce_seconds=0.05))
    ann, _, doc = await api.room("editor")
    documents = live_documents(api)
    live = await documents.open(uuid_of(doc))
    author: pycrdt.Doc[Any] = pycrdt.Doc()
    text = author.get("content", type=pycrdt.Text)
    text += "first"
    assert await documents.submit(live, author.get_update(), origin=None)  # a snapshot due

    in_batch = False
    release = asyncio.Event()
    writer = documents._updates  # the app's one-trip writer
    assert writer is not None
    append, apply, write_snapshot = writer.append, live._apply, documents._write_snapshot
    seen: list[bool] = []  # in_batch when each snapshot began

    async def held_append(*args: Any) -> list[int]:
        nonlocal in_batch
        in_batch = True
        update_ids = await append(*args)
        await release.wait()
        return update_ids

    def applied(update: bytes) -> tuple[bytes | None, bool]:
        nonlocal in_batch
        try:
            return apply(update)
        finally:
            in_batch = False

    async def recorded_snapshot(*args: Any) -> int | None:
        seen.append(in_batch)
        return await write_snapshot(*args)

    monkeypatch.setattr(writer, "append", held_append)
    monkeypatch.setattr(live, "_apply", applied)
    monkeypatch.setattr(documents, "_write_snapshot", recorded_snapshot)
    before = author.get_state()
    text += " second"
    second = asyncio.ensure_future(documents.submit(live, author.get_update(before), origin=None))
    # The snapshot's timer (0.05 s) fired: the snapshot has begun, and clears it first.
    await eventually(lambda: truthy(live._snapshot_timer is None))
    release.set()
    assert await second
    await eventually(lambda: truthy(seen))
    await eventually(lambda: equal_async(storage_count(api, ann, doc), 0))
    assert seen and not any(seen)
    documents.close(live)


async def test_loading_happens_once_for_a_crowd_and_idle_documents_unload(
    start_app: AppFactory, open_document_on: OpenDocumentOn, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await start_app(yjs_unload_after_seconds=0.2, yjs_snapshot_debounce_seconds=30)
    api = Api(client)
    ann, ben, doc = await api.room("editor")
    await api.call("POST", content_url(doc), user=ann, json={"text": "seed", "mode": "append"})
    await eventually(lambda: equal(live_documents(api).loaded(uuid_of(doc)), None))

    loads = 0
    real_load = crdt_repo.load

    async def counting_load(*args: Any) -> Any:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.2)  # a slow database: everyone arrives during the load
        return await real_load(*args)

    monkeypatch.setattr(crdt_repo, "load", counting_load)
    crowd = await asyncio.gather(
        *(open_document_on(client, user, doc["id"]) for user in [ann, ben] * 5)
    )
    assert loads == 1
    assert {c.text for c in crowd} == {"seed"}

    append(crowd[0], " more")
    await eventually(lambda: truthy(all(c.text == "seed more" for c in crowd)))
    for c in crowd:
        await c.close()
    # Nobody has it open: saved (snapshot, empty log) and dropped from memory.
    await eventually(lambda: equal(live_documents(api).loaded(uuid_of(doc)), None))
    info = await storage(api, ann, doc)
    assert info["update_count"] == 0 and info["snapshot_bytes"] > 0 and not info["loaded"]
    assert await stored_text(api, ann, doc) == "seed more"


# --- REST -----------------------------------------------------------------------------


async def test_rest_content_formats_and_live_server_edits(
    api: Api, open_document: DocumentFactory
) -> None:
    ann, ben, doc = await api.room("viewer")
    watcher = await open_document(ben, doc["id"])
    body = await api.call(
        "POST", content_url(doc), user=ann, json={"text": "Grüße 👋 ", "mode": "append"}
    )
    assert body == {"text": "Grüße 👋 "}
    await api.call("POST", content_url(doc), user=ann, json={"text": "中文", "mode": "append"})
    await eventually(lambda: equal(watcher.text, "Grüße 👋 中文"))

    response = await api.client.get(content_url(doc) + "?format=text", headers=ben.headers)
    assert response.content_type == "text/plain" and await response.text() == "Grüße 👋 中文"
    response = await api.client.get(content_url(doc) + "?format=yjs", headers=ben.headers)
    assert response.content_type == "application/octet-stream"
    copy = pycrdt.Doc()
    copy.apply_update(await response.read())
    assert str(copy.get("content", type=pycrdt.Text)) == "Grüße 👋 中文"

    await api.call("POST", content_url(doc), user=ann, json={"text": "new", "mode": "replace"})
    await eventually(lambda: equal(watcher.text, "new"))

    body = {"json": {"text": "x", "mode": "append"}}
    await api.error("POST", content_url(doc), user=ben, expect=403, code="read_only", **body)
    body = {"json": {"text": "x", "mode": "insert"}}
    await api.error(
        "POST", content_url(doc), user=ann, expect=422, code="validation_failed", **body
    )
    await api.call("GET", content_url(doc) + "?format=pdf", user=ann, expect=422)
    eve = await api.user("eve")
    await api.call("GET", content_url(doc), user=eve, expect=404)
    await api.call("GET", content_url(doc, "storage"), user=eve, expect=404)
    info = await storage(api, ben, doc)
    assert set(info) == {"update_count", "update_bytes", "snapshot_bytes", "loaded"}
    assert info["loaded"] is True


async def test_a_failed_write_is_asked_for_again_and_not_lost(
    api: Api, open_document: DocumentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann, ben, doc = await api.room("editor")
    a = await open_document(ann, doc["id"])
    b = await open_document(ben, doc["id"])
    writer = live_documents(api)._updates  # the app's one-trip writer
    assert writer is not None
    real_append = writer.append
    failures = 1

    async def flaky_append(*args: Any) -> list[int]:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError("the database went away")
        return await real_append(*args)

    monkeypatch.setattr(writer, "append", flaky_append)
    append(a, "survives")
    await eventually(lambda: equal(codes(a), ["unavailable"]))
    # The server re-syncs with the client: the change arrives after all.
    await eventually(lambda: equal(b.text, "survives"))
    assert await stored_text(api, ann, doc) == "survives"


async def test_a_document_whose_openers_gave_up_while_it_loaded_is_unloaded(
    start_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = Api(await start_app(yjs_unload_after_seconds=0.1))
    _, _, doc = await api.room("editor")
    real_load = crdt_repo.load

    async def slow_load(*args: Any) -> Any:
        await asyncio.sleep(0.3)
        return await real_load(*args)

    monkeypatch.setattr(crdt_repo, "load", slow_load)
    documents = live_documents(api)
    opening = asyncio.create_task(documents.open(uuid_of(doc)))
    await asyncio.sleep(0.05)
    opening.cancel()  # a client that disconnects while the document loads
    with contextlib.suppress(asyncio.CancelledError):
        await opening
    assert documents.loaded(uuid_of(doc)) is not None  # the load goes on
    await eventually(lambda: equal(documents.loaded(uuid_of(doc)), None))


async def test_a_load_in_flight_at_shutdown_ends_with_the_app(
    start_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await start_app()
    api = Api(client)
    _, _, doc = await api.room("editor")
    loading, let_go = asyncio.Event(), asyncio.Event()
    real_load = crdt_repo.load

    async def slow_load(*args: Any) -> Any:
        loading.set()
        try:
            await asyncio.sleep(30)  # a database that hangs: shutdown must not wait for it
            return await real_load(*args)
        finally:
            await asyncio.sleep(0.2)  # a driver takes a moment to let go, as aiosqlite does
            let_go.set()

    monkeypatch.setattr(crdt_repo, "load", slow_load)
    documents = live_documents(api)
    opening = asyncio.create_task(documents.open(uuid_of(doc)))
    await loading.wait()
    await client.close()
    # The load ended before the app did: nothing uses the database once it is closed.
    assert let_go.is_set()
    with pytest.raises(asyncio.CancelledError):
        await opening


async def test_an_update_waiting_for_its_dependency_survives_snapshots_and_reloads(
    start_app: AppFactory,
) -> None:
    """yrs keeps the part of an update that waits for a dependency aside and leaves it
    out of the document's encoding: a snapshot alone dropped that acknowledged update
    from the log for good. It stays in the log until its dependency arrives."""
    api = Api(await start_app())
    _, _, doc = await api.room("editor")
    author: pycrdt.Doc[Any] = pycrdt.Doc()
    text = author.get("content", type=pycrdt.Text)
    text += "hello"
    first = author.get_update()
    before = author.get_state()
    text += " world"
    second = author.get_update(before)  # needs `first`

    documents = live_documents(api)
    live = await documents.open(uuid_of(doc))
    assert await documents.submit(live, second, origin=None) is False  # it waits
    documents.close(live)
    for _ in range(2):  # snapshot, unload, load (it waits again), snapshot, unload
        await documents.close_all()
        live = await documents.open(uuid_of(doc))
        assert str(live.text) == ""
        documents.close(live)

    live = await documents.open(uuid_of(doc))
    assert await documents.submit(live, first, origin=None) is True
    assert str(live.text) == "hello world"
    documents.close(live)
    await documents.close_all()  # and now the snapshot holds both
    live = await documents.open(uuid_of(doc))
    assert str(live.text) == "hello world"
    assert live.waiting == []
    documents.close(live)


async def test_an_ordinary_edit_is_relayed_once_and_not_back_to_its_sender(
    start_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only an update that let earlier waiting ones in is followed by what it changed
    (to everyone): a keystroke was relayed twice, once back to its sender."""
    api = Api(await start_app())
    _, _, doc = await api.room("editor")
    documents = live_documents(api)
    relayed: list[str | None] = []
    monkeypatch.setattr(
        documents._broadcaster,
        "document_updated",
        lambda document_id, update, skip_connection: relayed.append(skip_connection),
    )
    author: pycrdt.Doc[Any] = pycrdt.Doc()
    text = author.get("content", type=pycrdt.Text)
    live = await documents.open(uuid_of(doc))
    for i in range(5):
        before = author.get_state()
        text.insert(0, str(i))
        if i == 4:
            del text[1:3]  # and a deletion
        assert await documents.submit(live, author.get_update(before), origin="sender")
    assert relayed == ["sender"] * 5
    documents.close(live)


async def test_the_one_trip_writer_logs_a_batch_in_its_order_and_nothing_of_a_refused_one(
    api: Api,
) -> None:
    """storage.update_batches (the app's writer on both backends): ids in the batch's
    order, the rows as SQLAlchemy reads them, a batch the database refuses stores
    nothing and leaves the writer working, and documents writing at once take turns."""
    ann, _, doc = await api.room("editor")
    engine, sessions = api.client.app[ENGINE], api.client.app[SESSIONS]
    writer = update_writer(engine)
    assert writer is not None
    try:
        # Distinct bytes of several lengths: a reordering shows.
        batch = [bytes([i % 251]) * (1 + i % 7) for i in range(300)]
        ids = await writer.append(uuid_of(doc), batch)
        assert ids == sorted(ids) and len(set(ids)) == len(batch)
        missing = uuid.uuid4()
        with pytest.raises(Exception, match=r"(?i)foreign key"):  # no such document
            await writer.append(missing, [b"\x00", b"\x01"])
        assert await writer.append(uuid_of(doc), [b"after"]) > ids[-1:]
        # Several documents' writers share it and write at once (they take turns).
        others = [uuid_of(await api.document(ann)) for _ in range(3)]
        at_once = await asyncio.gather(
            *(writer.append(other, [b"a", b"b"]) for other in others for _ in range(3))
        )
        assert len({update_id for ids_ in at_once for update_id in ids_}) == 18
        async with read_session(sessions) as session:
            stored = await crdt_repo.load(session, uuid_of(doc))
            refused = await crdt_repo.storage_info(session, missing)
        assert stored.updates[:-1] == list(zip(ids, batch, strict=True))
        assert stored.updates[-1][1] == b"after"
        assert refused.update_count == 0
    finally:
        await writer.close()
