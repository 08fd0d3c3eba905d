"""Collaborative documents over the y-socket.io protocol, with the Python DocumentClient."""

from __future__ import annotations

from tests.conftest import DocumentFactory
from tests.helpers import Api, eventually


async def test_two_editors_converge_and_the_server_keeps_the_text(
    api: Api, open_document: DocumentFactory
) -> None:
    ann, ben, doc = await api.room("editor")
    a = await open_document(ann, doc["id"])
    b = await open_document(ben, doc["id"])
    a.edit(lambda text: text.insert(0, "hello"))
    await eventually(lambda: _equal(b.text, "hello"))
    b.edit(lambda text: text.insert(len(text), " world"))
    await eventually(lambda: _equal(a.text, "hello world"))
    body = await api.call("GET", f"/api/v1/documents/{doc['id']}/content", user=ann)
    assert body == {"text": "hello world"}


def _equal(actual: object, expected: object) -> None:
    assert actual == expected
