"""Crafted Yjs updates: one that makes yrs panic never bricks a document (issue 11,
finding 1), and a viewer's update is judged without copying the document (finding 3).

tests/data/yjs_poison.json holds a real poison: well formed (it applies to an empty
document, so it passes ``check_update``) but yrs panics applying it to the content
``target`` describes. pycrdt raises that panic as a ``BaseException``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pycrdt import Doc, Text

from app.errors import UnappliableUpdate
from app.keys import LIVE_DOCUMENTS, SESSIONS
from app.services.live_documents import LiveDocument
from app.services.yjs_updates import apply_contained, build_document
from storage.repositories import crdt as crdt_repo
from tests.conftest import OpenDocumentOn
from tests.helpers import Api, eventually, truthy

CORPUS = json.loads((Path(__file__).parent / "data" / "yjs_poison.json").read_text())
TARGET = bytes.fromhex(CORPUS["target"])
POISON = bytes.fromhex(CORPUS["poison"])


def text_of(doc: Doc[Any]) -> str:
    return str(doc.get("content", type=Text))


def edit_after(state: bytes, text: str) -> bytes:
    """A good update: ``text`` appended to the document whose state is ``state``."""
    doc: Doc[Any] = Doc()
    doc.apply_update(state)
    before = doc.get_state()
    content = doc.get("content", type=Text)
    content += text
    return doc.get_update(before)


def target_text() -> str:
    doc: Doc[Any] = Doc()
    doc.apply_update(TARGET)
    return text_of(doc)


def test_the_poison_is_well_formed_and_its_panic_is_contained() -> None:
    Doc().apply_update(POISON)  # what check_update tries: no error
    doc: Doc[Any] = Doc()
    doc.apply_update(TARGET)
    with pytest.raises(UnappliableUpdate):
        apply_contained(doc, POISON)


def test_a_stored_poison_is_left_out_when_the_document_is_built() -> None:
    after = edit_after(TARGET, " [later]")
    stored = crdt_repo.StoredDocument(snapshot=None, updates=[(1, TARGET), (2, POISON), (3, after)])
    doc, skipped = build_document(stored)
    assert skipped == [2]
    assert text_of(doc) == target_text() + " [later]"


async def test_a_poison_sent_live_is_refused_and_the_document_lives_on(
    client: TestClient[web.Request, web.Application], open_document_on: OpenDocumentOn
) -> None:
    api = Api(client)
    owner, member, doc = await api.room("editor")
    documents = client.app[LIVE_DOCUMENTS]
    async with documents.opened(uuid_of(doc)) as live:
        assert await documents.submit(live, TARGET, origin=None)
    writer = await open_document_on(client, member, doc["id"])
    await eventually(lambda: truthy(writer.text == target_text()))

    # Through the socket, as an attacker with an editor's account would send it.
    writer._send("sync-update", POISON)
    await eventually(lambda: truthy(writer.errors))
    assert writer.errors[-1]["code"] == "invalid_update"
    assert writer.errors[-1]["message"] == "the update cannot be applied to this document"

    # The document still answers, takes edits, and its log holds no poison.
    body = await api.call("GET", f"/api/v1/documents/{doc['id']}/content", user=owner)
    assert body["text"] == target_text()
    async with documents.opened(uuid_of(doc)) as live:
        good = edit_after(live.doc.get_update(), " [after]")
        assert await documents.submit(live, good, origin=None)
    async with client.app[SESSIONS]() as session:
        stored = await crdt_repo.load(session, uuid_of(doc))
    assert POISON not in [update for _, update in stored.updates]
    rebuilt, skipped = build_document(stored)
    assert skipped == [] and text_of(rebuilt) == target_text() + " [after]"
    await eventually(lambda: truthy(writer.text == target_text() + " [after]"))


async def test_a_document_whose_log_holds_a_poison_still_loads(
    client: TestClient[web.Request, web.Application], open_document_on: OpenDocumentOn
) -> None:
    """As after a crash of a server that stored it: every load used to panic."""
    api = Api(client)
    owner, member, doc = await api.room("editor")
    async with client.app[SESSIONS].begin() as session:
        for update in (TARGET, POISON):
            await crdt_repo.append_update(session, uuid_of(doc), update)
    body = await api.call("GET", f"/api/v1/documents/{doc['id']}/content", user=owner)
    assert body["text"] == target_text()
    reader = await open_document_on(client, member, doc["id"])
    assert reader.text == target_text()


def uuid_of(doc: dict[str, Any]) -> uuid.UUID:
    return uuid.UUID(doc["id"])


async def test_whether_an_update_changes_the_document_is_decided_without_a_copy() -> None:
    """Issue 11, finding 3: a viewer's update cost a copy of the whole document."""
    server: Doc[Any] = Doc()
    text = server.get("content", type=Text)
    text += "hello world"
    del text[0:1]  # the document has a delete set of its own
    live = LiveDocument(uuid.uuid4(), doc=server)
    viewer: Doc[Any] = Doc()
    viewer.apply_update(server.get_update())

    assert not live.would_change(viewer.get_update())  # a sync answer: nothing new
    assert not live.would_change(viewer.get_update(server.get_state()))  # its delete set

    inserting: Doc[Any] = Doc()
    inserting.apply_update(server.get_update())
    before = inserting.get_state()
    inserting.get("content", type=Text).insert(0, "x")
    assert live.would_change(inserting.get_update(before))

    deleting: Doc[Any] = Doc()
    deleting.apply_update(server.get_update())
    del deleting.get("content", type=Text)[0:4]  # deletes what the document still has
    assert live.would_change(deleting.get_update(server.get_state()))

    # A deletion of items the document has yet to receive (yrs would keep it pending).
    ahead: Doc[Any] = Doc()
    ahead.apply_update(server.get_update())
    ahead_text = ahead.get("content", type=Text)
    ahead_text += "!!!"
    del ahead_text[len(ahead_text) - 3 :]
    deletes_only = ahead.get_update(ahead.get_state())  # no structs, its delete set
    assert live.would_change(deletes_only)
    assert text_of(server) == "ello world"  # and none of this touched the document
