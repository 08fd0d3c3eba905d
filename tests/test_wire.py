"""``message_data`` (app/wire.py), the hot reads' message without a model, is exactly
``dump(MessageOut.of_row(row))`` for every kind of stored message, on both backends."""

from __future__ import annotations

import uuid

from app.keys import CHAT_SERVICE, SESSIONS
from app.wire import MessageOut, dump, message_data
from storage.db import read_session
from storage.repositories import messages as messages_repo
from tests.conftest import ClientFactory
from tests.helpers import Api


async def test_a_rows_wire_form_is_its_models_dump(api: Api, connect: ClientFactory) -> None:
    ann, _, doc = await api.room("editor")
    document_id = doc["id"]
    client = await connect(ann)
    await client.join(document_id)
    plain = await client.send(document_id, "hello")
    await client.send(document_id, 'ünïcode ✓ "quoted"\n')
    edited = await client.send(document_id, "before")
    await client.command(
        "chat:edit", {"document_id": document_id, "message_id": edited["id"], "text": "after"}
    )
    await client.command("chat:delete", {"document_id": document_id, "message_id": plain["id"]})
    meta = {"reply_id": str(uuid.uuid4()), "nested": {"n": [1, 2.5, None, "x"]}}
    await api.client.app[CHAT_SERVICE].post_assistant(uuid.UUID(document_id), "an answer", meta)

    async with read_session(api.client.app[SESSIONS]) as session:
        rows = await messages_repo.messages_after(session, uuid.UUID(document_id), 0, limit=10)
    shapes = {
        (row.author_kind.value, row.edited_at is not None, row.deleted_at is not None)
        for row in rows
    }
    assert shapes == {
        ("user", False, True),
        ("user", False, False),
        ("user", True, False),
        ("assistant", False, False),
    }
    for row in rows:
        assert message_data(row) == dump(MessageOut.of_row(row))
