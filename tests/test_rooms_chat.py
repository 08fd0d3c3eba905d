"""Joining rooms and chatting with the project's Python client (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.services import chat as chat_service
from roomclient import CommandError, RoomClient
from storage.repositories import messages as messages_repo
from tests.conftest import AppFactory, ClientFactory, ConnectOn
from tests.helpers import Api, arrivals, eventually


def chat_events(client: RoomClient) -> list[dict[str, object]]:
    return [data["message"] for event, data in client.events if event == "chat:message"]  # type: ignore[misc]


async def test_two_users_see_each_other_arrive_and_chat_both_ways(
    api: Api, connect: ClientFactory
) -> None:
    ann, ben, doc = await api.room("editor")

    a = await connect(ann)
    room = await a.join(doc["id"])
    assert (room.title, room.role) == ("Launch plan", "owner")
    assert list(room.presence) == [ann.id]

    b = await connect(ben)
    joined = await b.command("join", {"document_id": doc["id"]})
    assert joined["role"] == "editor" and joined["last_seq"] == 0
    assert {user["username"] for user in joined["presence"]} == {"ann", "ben"}
    await eventually(lambda: assert_arrived(a, ben.id))
    assert a.room(doc["id"]).presence[ben.id]["username"] == "ben"

    b_room = await b.join(doc["id"])
    ack = await a.send(doc["id"], "hello ben")
    assert ack["seq"] == 1 and set(ack) == {"id", "seq", "created_at"}
    reply = await b.send(doc["id"], "hi ann")
    assert reply["seq"] == 2

    await eventually(lambda: assert_texts(b, doc["id"], ["hello ben", "hi ann"]))
    await eventually(lambda: assert_texts(a, doc["id"], ["hello ben", "hi ann"]))
    message = chat_events(b)[0]
    assert message["author"] == {"kind": "user", "id": ann.id, "username": "ann"}
    assert b_room.last_seq == 2
    # The sender's own connection gets the ack, not a copy of the broadcast.
    assert [m["seq"] for m in chat_events(a)] == [2]  # type: ignore[index]


def assert_arrived(client: RoomClient, user_id: str) -> None:
    assert user_id in arrivals(client.events), client.events


def assert_texts(client: RoomClient, document_id: str, texts: list[str]) -> None:
    assert [m["text"] for m in client.room(document_id).messages] == texts


async def test_sender_other_tabs_receive_the_message(api: Api, connect: ClientFactory) -> None:
    ann = await api.user("ann")
    doc = await api.document(ann)
    tab1, tab2 = await connect(ann), await connect(ann)
    await tab1.join(doc["id"])
    await tab2.join(doc["id"])
    await tab1.send(doc["id"], "from tab one")
    await eventually(lambda: assert_texts(tab2, doc["id"], ["from tab one"]))


async def test_retried_send_returns_the_original_ack_and_stores_once(
    api: Api, connect: ClientFactory
) -> None:
    ann, ben, doc = await api.room("viewer")
    a, b = await connect(ann), await connect(ben)
    await a.join(doc["id"])
    await b.join(doc["id"])
    first = await a.send(doc["id"], "once", client_msg_id="retry-1")
    again = await a.send(doc["id"], "once (retried)", client_msg_id="retry-1")
    assert again == first
    later = await a.send(doc["id"], "next", client_msg_id="retry-2")
    assert later["seq"] == first["seq"] + 1  # the retry used no seq
    page = await api.call("GET", f"/api/v1/documents/{doc['id']}/messages", user=ann)
    assert [m["text"] for m in page["items"]] == ["once", "next"]
    await eventually(lambda: assert_texts(b, doc["id"], ["once", "next"]))
    assert len(chat_events(b)) == 2


async def test_history_pages_backwards_over_socket_and_rest(
    api: Api, connect: ClientFactory
) -> None:
    ann = await api.user("ann")
    doc = await api.document(ann)
    a = await connect(ann)
    await a.join(doc["id"])
    for i in range(1, 8):
        await a.send(doc["id"], f"m{i}")

    newest, more = await a.history(doc["id"], limit=3)
    assert ([m["seq"] for m in newest], more) == ([5, 6, 7], True)
    older, more = await a.history(doc["id"], before_seq=5, limit=3)
    assert ([m["seq"] for m in older], more) == ([2, 3, 4], True)
    oldest, more = await a.history(doc["id"], before_seq=2, limit=3)
    assert ([m["seq"] for m in oldest], more) == ([1], False)
    after, more = await a.history(doc["id"], after_seq=5, limit=3)
    assert ([m["seq"] for m in after], more) == ([6, 7], False)

    base = f"/api/v1/documents/{doc['id']}/messages"
    page = await api.call("GET", f"{base}?before=5&limit=3", user=ann)
    assert [m["seq"] for m in page["items"]] == [2, 3, 4] and page["has_more"] is True
    page = await api.call("GET", f"{base}?after=5", user=ann)
    assert [m["text"] for m in page["items"]] == ["m6", "m7"] and page["has_more"] is False
    await api.error(
        "GET", f"{base}?before=2&after=1", user=ann, expect=422, code="validation_failed"
    )
    stranger = await api.user("eve")
    await api.error("GET", base, user=stranger, expect=404, code="not_found")


async def test_closing_a_client_while_it_reconnects_stops_it(
    api: Api, connect: ClientFactory
) -> None:
    ann = await api.user("ann")
    a = await connect(ann)
    await a.sio.eio.ws.close()  # the transport dies under the client: it reconnects
    await eventually(lambda: assert_not_connected(a))
    await a.close()
    # wait() returns once the connection and every reconnection attempt have ended:
    # a client merely disconnected would reconnect and keep it waiting.
    await asyncio.wait_for(a.sio.wait(), 10)
    assert not a.connected


async def test_reconnect_with_since_seq_misses_nothing(
    start_app: AppFactory, connect: ClientFactory
) -> None:
    """More than a page missed: the ack says has_more and the client pages on."""
    client = await start_app(history_page_size=4)
    api = Api(client)
    ann, ben, doc = await api.room("editor")
    url = str(client.make_url("/")).rstrip("/")
    a = RoomClient(url, ann.access_token)
    b = RoomClient(url, ben.access_token)
    await a.connect()
    await b.connect()
    try:
        await a.join(doc["id"])
        await b.join(doc["id"])
        await a.send(doc["id"], "before")
        await eventually(lambda: assert_texts(b, doc["id"], ["before"]))

        await b.sio.eio.ws.close()  # the transport dies under the client: it reconnects
        await eventually(lambda: assert_not_connected(b))
        for i in range(10):
            await a.send(doc["id"], f"while away {i}")

        await eventually(
            lambda: assert_texts(b, doc["id"], ["before"] + [f"while away {i}" for i in range(10)]),
            timeout=15,
        )
        seqs = [m["seq"] for m in b.room(doc["id"]).messages]
        assert seqs == list(range(1, 12))  # no gap, no duplicate
        # ann was there all along: her arrival was never news to ben.
        assert ann.id not in arrivals(b.events)
        assert set(b.room(doc["id"]).presence) == {ann.id, ben.id}
    finally:
        await a.close()
        await b.close()


def assert_not_connected(client: RoomClient) -> None:
    assert not client.connected


async def test_join_ack_reports_has_more_for_a_long_absence(
    start_app: AppFactory,
) -> None:
    client = await start_app(history_page_size=3)
    api = Api(client)
    ann = await api.user("ann")
    doc = await api.document(ann)
    url = str(client.make_url("/")).rstrip("/")
    async with RoomClient(url, ann.access_token) as a:
        await a.join(doc["id"])
        for i in range(5):
            await a.send(doc["id"], f"m{i}")
        data = await a.command("join", {"document_id": doc["id"], "since_seq": 1})
    assert [m["seq"] for m in data["messages"]] == [2, 3, 4]
    assert data["has_more"] is True and data["last_seq"] == 5


async def test_authors_edit_and_delete_and_the_room_sees_it(
    api: Api, connect: ClientFactory
) -> None:
    ann, ben, doc = await api.room("editor")
    a, b = await connect(ann), await connect(ben)
    await a.join(doc["id"])
    await b.join(doc["id"])
    ben_msg = await b.send(doc["id"], "tpyo")
    edited = await b.edit(doc["id"], ben_msg["id"], "typo")
    assert edited["text"] == "typo" and edited["edited_at"] is not None
    await eventually(lambda: assert_texts(a, doc["id"], ["typo"]))

    with pytest.raises(CommandError) as refused:
        await a.edit(doc["id"], ben_msg["id"], "not mine")
    assert refused.value.code == "forbidden"

    ann_msg = await a.send(doc["id"], "secret")
    with pytest.raises(CommandError) as refused:
        await b.delete(doc["id"], ann_msg["id"])
    assert refused.value.code == "forbidden"
    deleted = await b.delete(doc["id"], ben_msg["id"])  # authors delete their own
    assert deleted["deleted"] is True and deleted["text"] == ""
    await a.delete(doc["id"], ann_msg["id"])
    owner_deletes = await b.send(doc["id"], "spam")
    await a.delete(doc["id"], owner_deletes["id"])  # the owner moderates
    await eventually(lambda: assert_texts(b, doc["id"], ["", "", ""]))
    assert [m["seq"] for m in b.room(doc["id"]).messages] == [1, 2, 3]  # seqs stay
    with pytest.raises(CommandError) as refused:
        await b.edit(doc["id"], ben_msg["id"], "resurrect")
    assert refused.value.code == "not_found"


async def test_viewers_read_but_cannot_send(api: Api, connect: ClientFactory) -> None:
    ann, vic = await api.user("ann"), await api.user("vic")
    doc = await api.document(ann)
    await api.share(ann, doc["id"], vic, "viewer")
    v = await connect(vic)
    room = await v.join(doc["id"])
    assert room.role == "viewer"
    with pytest.raises(CommandError) as refused:
        await v.send(doc["id"], "hello")
    assert refused.value.code == "forbidden"
    history, _ = await v.history(doc["id"])
    assert history == []


async def test_joins_share_a_catch_up_read_kept_a_moment_and_an_edit_is_read_again(
    start_app: AppFactory, connect_on: ConnectOn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kept READ_KEEP_SECONDS (1 s) after it ran; here longer, lest a slow machine
    # expire it between two joins.
    monkeypatch.setattr(chat_service, "READ_KEEP_SECONDS", 60)
    api = Api(await start_app())
    connect = connect_on(api)
    ann, ben, doc = await api.room("editor")
    author = await connect(ann)
    await author.join(doc["id"])
    sent = [await author.send(doc["id"], f"note {i}") for i in range(5)]
    reads = 0
    read = messages_repo.messages_after

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await read(*args, **kwargs)

    monkeypatch.setattr(messages_repo, "messages_after", counted)
    tabs = [await connect(ben) for _ in range(4)]  # 5 connections a user at most

    async def catch_up(tab: RoomClient) -> list[str]:
        data = await tab.command("join", {"document_id": doc["id"], "since_seq": 0})
        assert data["last_seq"] == len(sent) and data["has_more"] is False
        return [message["text"] for message in data["messages"]]

    texts = [f"note {i}" for i in range(5)]
    assert await asyncio.gather(*map(catch_up, tabs)) == [texts] * len(tabs)
    assert reads < len(tabs)  # shared (a read in flight is joined by those after it)
    shared = reads
    assert await catch_up(tabs[0]) == texts  # the read kept: nothing read again
    assert reads == shared
    sent.append(await author.send(doc["id"], "note 5"))
    texts.append("note 5")  # the kept read, and what came after it read on its own
    assert await catch_up(tabs[1]) == texts
    assert reads == shared + 1
    await author.edit(doc["id"], sent[0]["id"], "edited")
    assert await catch_up(await connect(ben)) == ["edited", *texts[1:]]
