"""Rooms with the official JavaScript client (socket.io-client 4 run by Node), against
the real app on SQLite and PostgreSQL; the project's Python RoomClient is the other
party where one is needed. See tests/js_client.py for how the Node process is driven.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from roomclient import RoomClient
from tests.conftest import ClientFactory, NodePrograms
from tests.helpers import Api, User, arrivals, departures, equal, eventually
from tests.js_client import POLLING_THEN_UPGRADE, WEBSOCKET, JsClient

pytestmark = pytest.mark.slow

JsFactory = Callable[..., Awaitable[JsClient]]


@pytest.fixture
def js(node_programs: NodePrograms, client: TestClient[web.Request, web.Application]) -> JsFactory:
    """``await js(user)``: a JS client connected as ``user`` (``None``: not connected);
    every Node process is ended when the test ends."""
    url = str(client.make_url("/")).rstrip("/")

    async def open_js(user: User | None, *, transports: list[str] | None = None) -> JsClient:
        js_client = await node_programs(JsClient, url)
        if user is not None:
            result = await js_client.connect(user.access_token, transports)
            assert result["connected"] is True, result
        return js_client

    return open_js


async def room_with(api: Api, member_role: str = "editor") -> tuple[User, User, str]:
    """ann owns a document shared with ben; (ann, ben, document id)."""
    ann, ben, doc = await api.room(member_role)
    return ann, ben, str(doc["id"])


def send_payload(document_id: str, text: Any, client_msg_id: str = "js-1") -> dict[str, Any]:
    return {"document_id": document_id, "client_msg_id": client_msg_id, "text": text}


def python_events(client: RoomClient, name: str) -> list[dict[str, Any]]:
    return [data for event, data in client.events if event == name]


def assert_python_got(client: RoomClient, name: str, count: int) -> list[dict[str, Any]]:
    events = python_events(client, name)
    assert len(events) == count, client.events
    return events


# --- connecting ------------------------------------------------------------------------


@pytest.mark.parametrize("transports", [WEBSOCKET, POLLING_THEN_UPGRADE], ids=["ws", "polling"])
async def test_connects_with_auth_token_and_runs_commands(
    api: Api, js: JsFactory, transports: list[str]
) -> None:
    ann = await api.user("ann")
    doc = await api.document(ann, "Notes")
    browser = await js(None)
    connected = await browser.connect(ann.access_token, transports)
    assert connected["connected"] is True and connected["sid"]
    assert await browser.events("$open") == [transports[0]]
    if transports == POLLING_THEN_UPGRADE:
        assert await browser.wait_upgrade() == "websocket"
    else:
        assert await browser.events("$upgrade") == []
    joined = await browser.command("join", {"document_id": doc["id"]})
    assert joined["document"] == {"id": doc["id"], "title": "Notes"}
    assert joined["role"] == "owner" and joined["connection_id"] == connected["sid"]
    assert (joined["last_seq"], joined["messages"], joined["has_more"]) == (0, [], False)


async def test_handshake_refusals_reach_connect_error(api: Api, js: JsFactory) -> None:
    bad = await js(None)
    refused = await bad.connect("not-a-jwt")
    assert refused["connected"] is False
    assert refused["connect_error"]["data"] == {"code": "invalid_token"}
    assert refused["connect_error"]["message"].startswith("the token is invalid")

    anonymous = await js(None)
    refused = await anonymous.connect(None)  # no auth payload at all
    assert refused["connected"] is False
    assert refused["connect_error"] == {
        "message": "send the access token as auth: {token: '...'}",
        "data": {"code": "unauthorized"},
    }


# --- a JS user and a Python user in one room ------------------------------------------


async def test_js_and_python_users_see_each_other_and_chat_both_ways(
    api: Api, connect: ClientFactory, js: JsFactory
) -> None:
    ann, ben, doc_id = await room_with(api)
    py = await connect(ann)
    await py.join(doc_id)
    b = await js(ben)

    joined = await b.command("join", {"document_id": doc_id})
    assert joined["role"] == "editor"
    assert {u["username"] for u in joined["presence"]} == {"ann", "ben"}
    await eventually(lambda: equal(arrivals(py.events), [ann.id, ben.id]))
    assert python_events(py, "presence:changed")[-1] == {
        "document_id": doc_id,
        "left": [],
        "joined": [{"user_id": ben.id, "username": "ben"}],
    }
    await py.leave(doc_id)  # ann goes and comes back: ben sees both, in that order
    await py.join(doc_id)

    async def ann_back() -> None:
        changes = await b.events("presence:changed")
        assert [e["left"] for e in changes if e["left"]] == [[ann.id]], changes
        # ...and back: in the same event (left applies first) or a later one.
        went = next(i for i, e in enumerate(changes) if e["left"])
        assert ann.id in [u["user_id"] for e in changes[went:] for u in e["joined"]], changes
        assert all(e["document_id"] == doc_id for e in changes)

    await eventually(ann_back)

    ack = await b.emit("chat:send", send_payload(doc_id, "hello from js"))
    assert ack["ok"] is True and set(ack) == {"ok", "data"}
    assert set(ack["data"]) == {"id", "seq", "created_at"} and ack["data"]["seq"] == 1
    reply = await py.send(doc_id, "hello from python")
    assert reply["seq"] == 2

    [message] = await b.wait_event("chat:message")
    assert message["document_id"] == doc_id
    assert message["message"]["seq"] == 2 and message["message"]["text"] == "hello from python"
    assert message["message"]["author"] == {"kind": "user", "id": ann.id, "username": "ann"}
    from_js = await eventually(lambda: assert_python_got(py, "chat:message", 1))
    assert from_js[0]["message"]["id"] == ack["data"]["id"]
    assert from_js[0]["message"]["text"] == "hello from js"
    assert from_js[0]["message"]["client_msg_id"] == "js-1"
    assert from_js[0]["message"]["created_at"] == ack["data"]["created_at"]
    assert from_js[0]["message"]["author"] == {"kind": "user", "id": ben.id, "username": "ben"}
    # The sender gets the ack, not a copy of its own message.
    assert len(await b.events("chat:message")) == 1


async def test_two_js_tabs_of_one_user_are_one_presence(
    api: Api, connect: ClientFactory, js: JsFactory
) -> None:
    ann, ben, doc_id = await room_with(api)
    py = await connect(ann)
    await py.join(doc_id)
    tab1, tab2 = await js(ben), await js(ben)
    tab1_id = (await tab1.command("join", {"document_id": doc_id}))["connection_id"]
    joined = await tab2.command("join", {"document_id": doc_id})
    [ben_here] = [user for user in joined["presence"] if user["user_id"] == ben.id]
    assert ben_here["connection_count"] == 2
    assert tab1_id != joined["connection_id"]

    await observed_after(py, tab2, doc_id, mark=1)
    assert arrivals(py.events) == [ann.id, ben.id]  # ann's own, then ben's first tab only

    await observed_after(py, tab1, doc_id, mark=0)  # tab1 has a state...
    await tab1.disconnect()  # ...and ben is still here in tab2: only tab1's state goes
    cleared = await eventually(lambda: states(py, None))
    assert cleared == [
        {"document_id": doc_id, "user_id": ben.id, "connection_id": tab1_id, "state": None}
    ]
    await observed_after(py, tab2, doc_id, mark=2)
    assert departures(py.events) == []
    assert ben.id in py.room(doc_id).presence

    await tab2.disconnect()
    await eventually(lambda: equal(departures(py.events), [ben.id]))
    assert python_events(py, "presence:changed")[-1] == {
        "document_id": doc_id,
        "left": [ben.id],
        "joined": [],
    }
    assert ben.id not in py.room(doc_id).presence


def states(client: RoomClient, state: dict[str, Any] | None) -> list[dict[str, Any]]:
    found = [e for e in python_events(client, "presence:state") if e["state"] == state]
    assert found, client.events
    return found


async def observed_after(py: RoomClient, tab: JsClient, doc_id: str, *, mark: int) -> None:
    """Wait until ``py`` has everything the room sent it before ``tab``'s next event:
    the server delivers one connection's events in order."""
    await tab.command("presence:update", {"document_id": doc_id, "state": {"mark": mark}})
    await eventually(lambda: states(py, {"mark": mark}))


# --- reconnecting ----------------------------------------------------------------------


@pytest.mark.parametrize("drop", ["disconnect", "network"])
async def test_rejoin_with_since_seq_gets_exactly_the_missed_messages(
    api: Api, connect: ClientFactory, js: JsFactory, drop: str
) -> None:
    ann, ben, doc_id = await room_with(api)
    py = await connect(ann)
    await py.join(doc_id)
    b = await js(ben)
    first_id = (await b.command("join", {"document_id": doc_id}))["connection_id"]
    await py.send(doc_id, "before")
    [live] = await b.wait_event("chat:message")
    last_seq = live["message"]["seq"]
    assert last_seq == 1

    if drop == "disconnect":
        await b.disconnect()
    else:
        await b.close_transport()  # the connection drops; the client reconnects by itself
    await eventually(lambda: equal(departures(py.events), [ben.id]))
    sent = [await py.send(doc_id, f"missed {i}") for i in range(5)]
    if drop == "disconnect":
        again = await b.connect(ben.access_token)
        assert again["connected"] is True
    else:
        again = await b.wait_connect()
    assert again["sid"] != first_id

    rejoined = await b.command("join", {"document_id": doc_id, "since_seq": last_seq})
    seqs = [m["seq"] for m in rejoined["messages"]]
    assert seqs == [2, 3, 4, 5, 6] == [ack["seq"] for ack in sent]
    assert [m["text"] for m in rejoined["messages"]] == [f"missed {i}" for i in range(5)]
    assert [m["id"] for m in rejoined["messages"]] == [ack["id"] for ack in sent]
    assert (rejoined["last_seq"], rejoined["has_more"]) == (6, False)
    assert len(await b.events("chat:message")) == 1  # nothing arrived twice
    assert [name for name, _ in await b.events() if name in ("$connect", "$disconnect")] == [
        "$connect",
        "$disconnect",
        "$connect",
    ]


# --- membership changes while joined --------------------------------------------------


async def test_removed_member_hears_it_and_can_no_longer_send(
    api: Api, connect: ClientFactory, js: JsFactory
) -> None:
    ann, ben, doc_id = await room_with(api)
    py = await connect(ann)
    await py.join(doc_id)
    b = await js(ben)
    await b.command("join", {"document_id": doc_id})

    await api.call("DELETE", f"/api/v1/documents/{doc_id}/members/{ben.id}", user=ann, expect=204)
    assert await b.wait_event("room:removed") == [{"document_id": doc_id, "reason": "removed"}]
    ack = await b.emit("chat:send", send_payload(doc_id, "still here?"))
    assert ack["ok"] is False and set(ack) == {"ok", "error"}
    assert ack["error"]["code"] == "not_joined" and ack["error"]["message"]
    await eventually(lambda: equal(departures(py.events), [ben.id]))
    assert ben.id not in py.room(doc_id).presence
    assert python_events(py, "chat:message") == []


async def test_demoted_member_hears_the_new_role_and_cannot_send(api: Api, js: JsFactory) -> None:
    ann, ben, doc_id = await room_with(api)
    b = await js(ben)
    await b.command("join", {"document_id": doc_id})
    assert (await b.command("chat:send", send_payload(doc_id, "as editor")))["seq"] == 1

    await api.call(
        "PUT",
        f"/api/v1/documents/{doc_id}/members/{ben.id}",
        user=ann,
        json={"role": "viewer"},
    )
    assert await b.wait_event("room:role") == [{"document_id": doc_id, "role": "viewer"}]
    ack = await b.emit("chat:send", send_payload(doc_id, "as viewer", "js-2"))
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden"
    history = await b.command("chat:history", {"document_id": doc_id})
    assert [m["text"] for m in history["messages"]] == ["as editor"]  # viewers still read


# --- bad input -------------------------------------------------------------------------


async def test_bad_commands_are_answered_in_the_ack(api: Api, js: JsFactory) -> None:
    _, ben, doc_id = await room_with(api)
    b = await js(ben)
    await b.command("join", {"document_id": doc_id})

    ack = await b.emit("chat:send", send_payload(doc_id, 42))  # a number as text
    assert ack["ok"] is False and ack["error"]["code"] == "validation_failed"
    assert [d["field"] for d in ack["error"]["details"]] == ["text"]
    assert ack["error"]["details"][0]["type"] == "string_type"

    ack = await b.emit("chat:shout", {"document_id": doc_id})
    assert ack["ok"] is False and ack["error"]["code"] == "unknown_event"
    assert "chat:shout" in ack["error"]["message"]
    assert await b.events("error") == []  # an ack was asked for: no error event


async def test_bad_commands_without_ack_get_an_error_event(api: Api, js: JsFactory) -> None:
    _, ben, doc_id = await room_with(api)
    b = await js(ben)
    await b.command("join", {"document_id": doc_id})

    await b.emit_no_ack("chat:send", send_payload(doc_id, 42))
    [error] = await b.wait_event("error")
    assert error["code"] == "validation_failed" and error["event"] == "chat:send"
    assert [d["field"] for d in error["details"]] == ["text"] and error["message"]

    await b.emit_no_ack("chat:shout", {"document_id": doc_id})
    errors = await b.wait_event("error", count=2)
    assert errors[1]["code"] == "unknown_event" and errors[1]["event"] == "chat:shout"
    # Nothing was stored.
    history = await b.command("chat:history", {"document_id": doc_id})
    assert history["messages"] == []
