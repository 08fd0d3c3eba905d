"""Collaborative documents over the y-socket.io protocol, with the Python DocumentClient,
against the real app on SQLite and PostgreSQL. The official JavaScript provider is
driven in tests/test_yjs_js.py."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from typing import Any

import pycrdt
import pytest
import socketio

from app.keys import LIVE_DOCUMENTS
from app.services.live_documents import LiveDocuments
from roomclient import DocumentClient
from storage.repositories import crdt as crdt_repo
from tests.conftest import AppFactory, DocumentFactory, OpenDocumentOn
from tests.helpers import Api, User, eventually


def content_url(doc: dict[str, Any], what: str = "content") -> str:
    return f"/api/v1/documents/{doc['id']}/{what}"


async def stored_text(api: Api, user: User, doc: dict[str, Any]) -> str:
    body = await api.call("GET", content_url(doc), user=user)
    return str(body["text"])


async def storage(api: Api, user: User, doc: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = await api.call("GET", content_url(doc, "storage"), user=user)
    return body


def live_documents(api: Api) -> LiveDocuments:
    return api.client.app[LIVE_DOCUMENTS]


async def metric(api: Api, name: str, **labels: str) -> float:
    response = await api.client.get("/metrics")
    text = await response.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def append(client: DocumentClient, text: str) -> None:
    client.edit(lambda shared: shared.insert(len(shared), text))


def codes(client: DocumentClient) -> list[str]:
    return [error["code"] for error in client.errors]


# --- editing together ---------------------------------------------------------------


async def test_two_editors_converge_and_the_server_keeps_the_text(
    api: Api, open_document: DocumentFactory
) -> None:
    ann, ben, doc = await api.room("editor")
    a = await open_document(ann, doc["id"])
    b = await open_document(ben, doc["id"])
    a.edit(lambda text: text.insert(0, "hello"))
    await eventually(lambda: _equal(b.text, "hello"))
    append(b, " world")
    await eventually(lambda: _equal(a.text, "hello world"))
    assert await stored_text(api, ann, doc) == "hello world"


async def test_concurrent_editing_converges_everywhere_and_in_storage(
    api: Api, open_document: DocumentFactory, start_app: AppFactory
) -> None:
    ann, ben, doc = await api.room("editor")
    clients = [await open_document(user, doc["id"]) for user in (ann, ben, ann, ben, ann)]

    async def type_words(index: int, client: DocumentClient) -> None:
        for n in range(20):
            client.edit(lambda text, n=n: text.insert(0 if n % 2 else len(text), f"<{index}.{n}>"))
            await asyncio.sleep(0)

    await asyncio.gather(*(type_words(i, c) for i, c in enumerate(clients)))
    expected_tokens = {f"<{i}.{n}>" for i in range(5) for n in range(20)}

    def converged() -> None:
        texts = {client.text for client in clients}
        assert len(texts) == 1
        assert set(re.findall(r"<\d+\.\d+>", texts.pop())) == expected_tokens

    await eventually(converged, timeout=20)
    final = clients[0].text
    assert await stored_text(api, ann, doc) == final
    # What is stored, loaded by another process on the same database.
    other = Api(await start_app())  # same database and token secret
    assert await stored_text(other, ann, doc) == final


async def test_a_late_joiner_receives_everything(api: Api, open_document: DocumentFactory) -> None:
    ann, ben, doc = await api.room("editor")
    a = await open_document(ann, doc["id"])
    for word in ["alpha ", "béta ", "γάμμα ", "😀"]:
        append(a, word)
    await eventually(lambda: _equal(a.text, "alpha béta γάμμα 😀"))
    await eventually(lambda: _truthy(live_documents(api).loaded(_uuid(doc)).text))
    late = await open_document(ben, doc["id"])
    await eventually(lambda: _equal(late.text, "alpha béta γάμμα 😀"))


async def test_offline_edits_merge_on_reconnect(api: Api, open_document: DocumentFactory) -> None:
    ann, ben, doc = await api.room("editor")
    a = await open_document(ann, doc["id"])
    b = await open_document(ben, doc["id"])
    append(a, "shared.")
    await eventually(lambda: _equal(b.text, "shared."))
    await b.sio.disconnect()
    append(b, " offline-b.")  # kept in b's document while it is away
    append(a, " online-a.")
    await b.sio.connect(
        b.url, namespaces=[b.namespace], transports=["websocket"], auth={"token": b.token}
    )
    await asyncio.wait_for(b.synced.wait(), 10)

    def merged() -> None:
        assert a.text == b.text
        assert "offline-b." in a.text and "online-a." in a.text

    await eventually(merged)
    assert await stored_text(api, ann, doc) == a.text


# --- who may connect and edit -------------------------------------------------------


async def test_non_members_and_bad_namespaces_are_refused(
    api: Api, open_document: DocumentFactory
) -> None:
    ann, _, doc = await api.room("editor")
    eve = await api.user("eve")
    url = str(api.client.make_url("/")).rstrip("/")
    cases = [(eve, doc["id"], "not_found"), (ann, "not-a-uuid", "not_found")]
    for user, document_id, code in cases:
        client = DocumentClient(url, user.access_token, document_id, reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect()
        await client.close()
        assert client.refused is not None and client.refused["code"] == code
    anonymous = DocumentClient(url, "", doc["id"], reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await anonymous.connect()
    await anonymous.close()
    assert anonymous.refused is not None and anonymous.refused["code"] == "unauthorized"


async def test_a_viewer_reads_live_but_its_edits_are_refused_and_told_once(
    api: Api, open_document: DocumentFactory
) -> None:
    ann, ben, doc = await api.room("viewer")
    a = await open_document(ann, doc["id"])
    append(a, "by the owner")
    viewer = await open_document(ben, doc["id"])
    await eventually(lambda: _equal(viewer.text, "by the owner"))
    before = await storage(api, ann, doc)

    append(viewer, " HACK")
    await eventually(lambda: _equal(codes(viewer), ["read_only"]))
    viewer.edit(lambda text: text.insert(0, ">> "))
    await eventually(lambda: _at_least(metric(api, "yjs_updates_total", outcome="read_only"), 2))
    assert codes(viewer) == ["read_only"]  # told once

    append(a, "!")  # the viewer still receives updates
    await eventually(lambda: _truthy("!" in viewer.text))
    assert a.text == "by the owner!"
    assert await stored_text(api, ann, doc) == "by the owner!"
    after = await storage(api, ann, doc)
    # Only the owner's "!" was stored (or compacted into the snapshot since).
    assert after["update_count"] <= before["update_count"] + 1


async def test_removal_role_change_and_deletion_act_on_open_connections(
    api: Api, open_document: DocumentFactory
) -> None:
    ann, ben, doc = await api.room("editor")
    b = await open_document(ben, doc["id"])
    append(b, "editor text")
    await eventually(lambda: _equal_async(stored_text(api, ann, doc), "editor text"))

    member_url = f"/api/v1/documents/{doc['id']}/members/{ben.id}"
    await api.call("PUT", member_url, user=ann, json={"role": "viewer"})
    append(b, " as viewer")
    await eventually(lambda: _equal(codes(b), ["read_only"]))
    assert await stored_text(api, ann, doc) == "editor text"

    await api.call("DELETE", member_url, user=ann, expect=204)
    await eventually(lambda: _equal(b.ended and b.ended["code"], "removed"))
    await eventually(lambda: _equal(b.sio.connected, False))

    a = await open_document(ann, doc["id"])
    await api.call("DELETE", f"/api/v1/documents/{doc['id']}", user=ann, expect=204)
    await eventually(lambda: _equal(a.ended and a.ended["code"], "deleted"))
    assert live_documents(api).loaded(_uuid(doc)) is None


# --- bad input and limits -----------------------------------------------------------


async def test_malformed_updates_and_state_vectors_are_refused_without_harm(
    api: Api, open_document: DocumentFactory
) -> None:
    ann, ben, doc = await api.room("editor")
    a = await open_document(ann, doc["id"])
    b = await open_document(ben, doc["id"])
    append(a, "intact")
    await eventually(lambda: _equal(b.text, "intact"))
    good = pycrdt.Doc()
    good.get("content", type=pycrdt.Text).insert(0, "x")
    truncated = good.get_update()[:-3]

    for payload in [b"\xff\xff\xff\xff", truncated, "not binary", [1, 2, 3]]:
        await b.sio.emit("sync-update", payload, namespace=b.namespace)
    await eventually(lambda: _equal(codes(b), ["invalid_update"]))  # told once
    answer = await b.sio.call("sync-step-1", b"\xff\xff", namespace=b.namespace, timeout=5)
    assert answer == b"\x00\x00"  # a valid no-op the provider can apply

    append(b, " still works")
    await eventually(lambda: _equal(a.text, "intact still works"))
    assert await stored_text(api, ann, doc) == "intact still works"


async def test_size_limits_refuse_updates_and_leave_the_document_whole(
    start_app: AppFactory, open_document_on: OpenDocumentOn
) -> None:
    client = await start_app(yjs_max_update_bytes=2048, yjs_max_document_bytes=8192)
    api = Api(client)
    ann, ben, doc = await api.room("editor")
    a = await open_document_on(client, ann, doc["id"])
    b = await open_document_on(client, ben, doc["id"])

    append(a, "x" * 4000)  # one update over 2 KiB
    await eventually(lambda: _equal(codes(a), ["update_too_large"]))
    assert await stored_text(api, ann, doc) == ""

    other = pycrdt.Doc()  # grow the document with updates that fit, until it is full
    other_text = other.get("content", type=pycrdt.Text)
    sent = ""
    for n in range(10):
        before = other.get_state()
        chunk = f"[{n}]" + "y" * 1500
        other_text.insert(len(other_text), chunk)
        await b.sio.emit("sync-update", other.get_update(before), namespace=b.namespace)
        sent += chunk
    await eventually(lambda: _truthy("document_too_large" in codes(b)))
    text = await stored_text(api, ann, doc)
    assert 0 < len(text) < len(sent) and sent.startswith(text)
    fresh = await open_document_on(client, ann, doc["id"])  # refusals stay with their senders
    assert fresh.text == text
    # The REST edit path obeys the same limit.
    response = await client.post(
        content_url(doc), json={"text": "z" * 9000, "mode": "append"}, headers=ann.headers
    )
    assert response.status == 413
    assert (await response.json())["error"]["code"] in {"update_too_large", "document_too_large"}


async def test_a_flood_is_rate_limited_then_resynced_without_losing_edits(
    start_app: AppFactory, open_document_on: OpenDocumentOn
) -> None:
    client = await start_app(yjs_messages_per_second=10, yjs_message_burst=5)
    api = Api(client)
    ann, ben, doc = await api.room("editor")
    a = await open_document_on(client, ann, doc["id"])
    b = await open_document_on(client, ben, doc["id"])
    for n in range(40):
        append(a, f"{n},")
    expected = "".join(f"{n}," for n in range(40))
    await eventually(lambda: _equal(codes(a), ["rate_limited"]))
    # The server asks again for what it lacks once the client may send: all arrive.
    await eventually(lambda: _equal(b.text, expected), timeout=15)
    assert await stored_text(api, ann, doc) == expected


# --- awareness ----------------------------------------------------------------------


async def test_awareness_is_relayed_sent_on_connect_and_removed_on_disconnect(
    api: Api, open_document: DocumentFactory
) -> None:
    ann, ben, doc = await api.room("editor")
    a = await open_document(ann, doc["id"])
    b = await open_document(ben, doc["id"])
    a.set_awareness({"user": {"name": "ann"}, "cursor": 3})
    await eventually(lambda: _equal(b.awareness.states.get(a.doc.client_id), a_state(a)))

    late = await open_document(ben, doc["id"])  # the full state arrives on connect
    await eventually(lambda: _equal(late.awareness.states.get(a.doc.client_id), a_state(a)))

    await a.close()
    # Gone at once for everyone, not after the 30 s awareness timeout.
    for client in (b, late):
        await eventually(lambda c=client: _equal(a.doc.client_id in c.awareness.states, False))


def a_state(client: DocumentClient) -> dict[str, Any]:
    return {"user": {"name": "ann"}, "cursor": 3}


async def test_malformed_awareness_is_refused(api: Api, open_document: DocumentFactory) -> None:
    ann, ben, doc = await api.room("editor")
    a = await open_document(ann, doc["id"])
    b = await open_document(ben, doc["id"])
    await a.sio.emit("awareness-update", b"\x05\x01", namespace=a.namespace)
    await eventually(lambda: _equal(codes(a), ["invalid_update"]))
    a.set_awareness({"ok": True})
    await eventually(lambda: _equal(b.awareness.states.get(a.doc.client_id), {"ok": True}))


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
    await eventually(lambda: _equal(b.text, "durable"))
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
    await eventually(lambda: _equal_async(storage_count(api, ann, doc), 0), timeout=10)
    assert await stored_text(api, ann, doc) == "".join(f"{n} " for n in range(25))


async def storage_count(api: Api, user: User, doc: dict[str, Any]) -> int:
    return int((await storage(api, user, doc))["update_count"])


async def test_loading_happens_once_for_a_crowd_and_idle_documents_unload(
    start_app: AppFactory, open_document_on: OpenDocumentOn, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await start_app(yjs_unload_after_seconds=0.2, yjs_snapshot_debounce_seconds=30)
    api = Api(client)
    ann, ben, doc = await api.room("editor")
    await api.call("POST", content_url(doc), user=ann, json={"text": "seed", "mode": "append"})
    await eventually(lambda: _equal(live_documents(api).loaded(_uuid(doc)), None))

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
    await eventually(lambda: _truthy(all(c.text == "seed more" for c in crowd)))
    for c in crowd:
        await c.close()
    # Nobody has it open: saved (snapshot, empty log) and dropped from memory.
    await eventually(lambda: _equal(live_documents(api).loaded(_uuid(doc)), None))
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
    await eventually(lambda: _equal(watcher.text, "Grüße 👋 中文"))

    response = await api.client.get(content_url(doc) + "?format=text", headers=ben.headers)
    assert response.content_type == "text/plain" and await response.text() == "Grüße 👋 中文"
    response = await api.client.get(content_url(doc) + "?format=yjs", headers=ben.headers)
    assert response.content_type == "application/octet-stream"
    copy = pycrdt.Doc()
    copy.apply_update(await response.read())
    assert str(copy.get("content", type=pycrdt.Text)) == "Grüße 👋 中文"

    await api.call("POST", content_url(doc), user=ann, json={"text": "new", "mode": "replace"})
    await eventually(lambda: _equal(watcher.text, "new"))

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


# --- small helpers --------------------------------------------------------------------


def _uuid(doc: dict[str, Any]) -> uuid.UUID:
    return uuid.UUID(doc["id"])


def _equal(actual: object, expected: object) -> None:
    assert actual == expected, (actual, expected)


def _truthy(value: object) -> None:
    assert value, value


async def _equal_async(actual: Any, expected: object) -> None:
    value = await actual
    assert value == expected, (value, expected)


async def _at_least(actual: Any, expected: float) -> None:
    value = await actual
    assert value >= expected, (value, expected)


async def test_a_failed_write_is_asked_for_again_and_not_lost(
    api: Api, open_document: DocumentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann, ben, doc = await api.room("editor")
    a = await open_document(ann, doc["id"])
    b = await open_document(ben, doc["id"])
    real_append = crdt_repo.append_update
    failures = 1

    async def flaky_append(*args: Any) -> int:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError("the database went away")
        return await real_append(*args)

    monkeypatch.setattr(crdt_repo, "append_update", flaky_append)
    append(a, "survives")
    await eventually(lambda: _equal(codes(a), ["unavailable"]))
    # The server re-syncs with the client: the change arrives after all.
    await eventually(lambda: _equal(b.text, "survives"))
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
    opening = asyncio.create_task(documents.open(_uuid(doc)))
    await asyncio.sleep(0.05)
    opening.cancel()  # a client that disconnects while the document loads
    with contextlib.suppress(asyncio.CancelledError):
        await opening
    assert documents.loaded(_uuid(doc)) is not None  # the load goes on
    await eventually(lambda: _equal(documents.loaded(_uuid(doc)), None))


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
    opening = asyncio.create_task(documents.open(_uuid(doc)))
    await loading.wait()
    await client.close()
    # The load ended before the app did: nothing uses the database once it is closed.
    assert let_go.is_set()
    with pytest.raises(asyncio.CancelledError):
        await opening
