"""What the assistant's tests share: reading a client's assistant events, asking, and a
room of two members (the stand-in for the Messages API is tests/fake_anthropic.py, its
fixtures ``anthropic_server`` and ``claude`` are in conftest.py)."""

from __future__ import annotations

from typing import Any

from roomclient import CommandError, RoomClient
from tests.conftest import ClientFactory
from tests.helpers import Api, User


def of(client: RoomClient, event: str, reply_id: str | None = None) -> list[dict[str, Any]]:
    return [
        data
        for name, data in client.events
        if name == event and (reply_id is None or data.get("reply_id") == reply_id)
    ]


def streamed(client: RoomClient, reply_id: str) -> str:
    chunks = of(client, "ai:chunk", reply_id)
    assert [c["seq"] for c in chunks] == list(range(1, len(chunks) + 1))
    return "".join(c["text"] for c in chunks)


async def ask(client: RoomClient, document_id: str, question: str) -> str:
    answer = await client.command("ai:ask", {"document_id": document_id, "question": question})
    return str(answer["reply_id"])


async def room_of_two(
    api: Api, connect: ClientFactory, *, member_role: str = "editor"
) -> tuple[User, User, str, RoomClient, RoomClient]:
    ann, ben, doc = await api.room(member_role)
    a, b = await connect(ann), await connect(ben)
    await a.join(doc["id"])
    await b.join(doc["id"])
    return ann, ben, doc["id"], a, b


async def ask_while_open(client: RoomClient, document_id: str, question: str) -> str:
    """Ask; an open circuit's refusal becomes an AssertionError for ``eventually``."""
    try:
        return await ask(client, document_id, question)
    except CommandError as exc:
        assert exc.code != "ai_unavailable", "the circuit is still open"
        raise
