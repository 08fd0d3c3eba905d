"""Caps and rate limits on what clients hold and send (issue 11, findings 5 and 6):
connections per process and per user, namespaces and rooms per connection, a deadline
for a connection that never connects a namespace, documents per user, and a token
bucket per connection and per user for every room command class.

Each test sets small limits of its own (conftest lifts the command rates for every
other test); the attack comes first, then what the server does now.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import socketio
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.buckets import Rate
from app.config import Settings
from realtime.namespaces.rooms import commands
from realtime.ratelimit import CommandLimits
from tests.conftest import AppFactory, ConnectOn
from tests.helpers import Api, User
from tests.raw_socketio import Closed, RawClient
from tests.test_rooms_errors import ack, refused
from tests.test_socket_connect import metric

Client = TestClient[web.Request, web.Application]
# The command classes, as their settings name them (rate_<class>_per_second).
COMMAND_CLASSES = [
    name.removeprefix("rate_").removesuffix("_per_second")
    for name in Settings.model_fields
    if name.startswith("rate_") and name.endswith("_per_second")
]


def port_of(client: Client) -> int:
    port = client.server.port
    assert port is not None
    return port


async def sio_connect(client: Client, user: User, *namespaces: str) -> socketio.AsyncClient:
    """A python-socketio client on one websocket transport, connected to ``namespaces``."""
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(
        str(client.make_url("/")),
        auth={"token": user.access_token},
        namespaces=list(namespaces) or ["/"],
        transports=["websocket"],
        wait_timeout=5,
    )
    return sio


async def close_refused(sio: socketio.AsyncClient) -> None:
    """python-engineio's client leaves its HTTP session open when a handshake fails."""
    await sio.shutdown()
    if sio.eio.http is not None and not sio.eio.http.closed:
        await sio.eio.http.close()


async def refused_connect(client: Client, user: User) -> Any:
    """The ``connect_error`` data of a refused default-namespace connect."""
    sio = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    sio.on("connect_error", errors.append)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sio.connect(
                str(client.make_url("/")),
                auth={"token": user.access_token},
                transports=["websocket"],
                wait_timeout=5,
            )
    finally:
        await close_refused(sio)
    assert len(errors) == 1, errors
    return errors[0]


async def namespace_answer(raw: RawClient, namespace: str, token: str) -> tuple[str, Any]:
    """Connect ``namespace`` on a raw transport: ("connected" | "refused", its data)."""
    await raw.send_text(f"40{namespace}," + json.dumps({"token": token}))
    async with asyncio.timeout(10):
        while True:
            message = await raw.receive()
            assert not isinstance(message, Closed), message
            if isinstance(message, str) and message.startswith(
                (f"40{namespace},", f"44{namespace},")
            ):
                data = json.loads(message[len(namespace) + 3 :])
                return ("connected" if message.startswith("40") else "refused"), data


# --- connections -----------------------------------------------------------------------


async def test_past_max_connections_a_handshake_is_answered_503_server_full(
    start_app: AppFactory,
) -> None:
    client = await start_app(max_connections=2)
    token = (await Api(client).user("alice")).access_token
    held = [await RawClient.connect(port_of(client), token) for _ in range(2)]
    try:
        # Polling and websocket handshakes alike: no session is made for either.
        response = await client.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        body = await response.json()
        assert body["error"]["code"] == "server_full", body
        sio = socketio.AsyncClient(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sio.connect(str(client.make_url("/")), transports=["websocket"], wait_timeout=5)
        await close_refused(sio)
        assert await metric(client, "socketio_connections_refused_total", code="server_full") == 2

        await held.pop().close()  # room again once one leaves
        async with asyncio.timeout(10):
            while True:
                response = await client.get(
                    "/socket.io/", params={"EIO": "4", "transport": "polling"}
                )
                if response.status == 200:
                    break
                await asyncio.sleep(0.05)
        # Close that polling session (an Engine.IO close packet): left open, the app's
        # shutdown would wait SHUTDOWN_TIMEOUT_SECONDS for it to poll again.
        sid = json.loads((await response.text())[1:])["sid"]
        params = {"EIO": "4", "transport": "polling", "sid": sid}
        closed = await client.post("/socket.io/", params=params, data="1")
        assert closed.status == 200
    finally:
        for raw in held:
            await raw.close()


async def test_a_user_holds_at_most_max_connections_per_user(start_app: AppFactory) -> None:
    client = await start_app(max_connections_per_user=2)
    api = Api(client)
    alice, bob = await api.user("alice"), await api.user("bob")
    doc = await api.document(alice)
    # One transport is one connection, whatever namespaces ride on it (a tab with its
    # chat and its document).
    first = await sio_connect(client, alice, "/", f"/yjs|{doc['id']}")
    second = await sio_connect(client, alice)
    opened = [first, second]
    try:
        error = await refused_connect(client, alice)
        assert error["data"] == {"code": "too_many_connections"}, error
        assert "2" in error["message"]
        opened.append(await sio_connect(client, bob))  # a cap per user, not for everyone

        await first.disconnect()
        async with asyncio.timeout(10):
            while True:  # the transport's close is handled after the client's returns
                try:
                    opened.append(await sio_connect(client, alice))
                    break
                except socketio.exceptions.ConnectionError:
                    await asyncio.sleep(0.05)
        refused_count = await metric(
            client, "socketio_connections_refused_total", code="too_many_connections"
        )
        assert refused_count is not None and refused_count >= 1
    finally:
        for sio in opened:
            await sio.disconnect()
            await sio.shutdown()


async def test_a_connection_opens_at_most_max_namespaces(start_app: AppFactory) -> None:
    client = await start_app(max_namespaces_per_connection=3)
    api = Api(client)
    alice = await api.user("alice")
    docs = [(await api.document(alice, f"doc {i}"))["id"] for i in range(3)]
    raw = await RawClient.connect(port_of(client), alice.access_token)
    try:
        assert (await namespace_answer(raw, f"/yjs|{docs[0]}", alice.access_token))[0] == (
            "connected"
        )
        assert (await namespace_answer(raw, f"/yjs|{docs[1]}", alice.access_token))[0] == (
            "connected"
        )
        outcome, data = await namespace_answer(raw, f"/yjs|{docs[2]}", alice.access_token)
        assert outcome == "refused"
        assert data["data"] == {"code": "too_many_namespaces"}, data
        # Closing one makes room.
        await raw.send_text(f"41/yjs|{docs[0]},")
        async with asyncio.timeout(10):
            while True:
                outcome, data = await namespace_answer(raw, f"/yjs|{docs[2]}", alice.access_token)
                if outcome == "connected":
                    break
                await asyncio.sleep(0.05)
    finally:
        await raw.close()


async def test_a_connection_without_a_namespace_is_closed_after_the_deadline(
    start_app: AppFactory,
) -> None:
    client = await start_app(socket_connect_timeout_seconds=0.3)
    alice = await Api(client).user("alice")
    # Answers every ping, never connects a namespace.
    idle = await RawClient.connect(port_of(client), None)
    # Connected, then left its only namespace: the same deadline starts again.
    left = await RawClient.connect(port_of(client), alice.access_token)
    # Connected and staying: untouched.
    staying = await RawClient.connect(port_of(client), alice.access_token)
    # Refused (a bad token), and never trying again.
    refused_once = await RawClient.connect(port_of(client), None)
    try:
        await refused_once.send_text('40{"token": "not a token"}')
        await left.send_text("41")
        for raw in (idle, left, refused_once):
            _, closed = await raw.events(until=10)
            assert closed is not None
        _, closed = await staying.events(until=0.6)
        assert closed is None
        reply, _ = await staying.call("typing", {"document_id": "not a uuid", "typing": True})
        assert reply["error"]["code"] == "validation_failed"
    finally:
        for raw in (idle, left, staying, refused_once):
            await raw.close()


# --- rooms and documents -----------------------------------------------------------------


async def test_a_connection_joins_at_most_max_rooms(
    start_app: AppFactory, connect_on: ConnectOn
) -> None:
    client = await start_app(max_rooms_per_connection=2)
    api = Api(client)
    alice = await api.user("alice")
    docs = [(await api.document(alice, f"doc {i}"))["id"] for i in range(3)]
    room_client = await connect_on(api)(alice)
    for doc in docs[:2]:
        await room_client.join(doc)
    error = await refused(room_client, "join", {"document_id": docs[2]}, "too_many_rooms")
    assert "2" in error["message"]
    await room_client.join(docs[0])  # joining a room it is in again is no new room
    await room_client.leave(docs[0])
    await room_client.join(docs[2])


async def test_a_user_owns_at_most_max_documents(start_app: AppFactory) -> None:
    client = await start_app(max_documents_per_user=2)
    api = Api(client)
    alice, bob = await api.user("alice"), await api.user("bob")
    first = await api.document(alice, "one")
    await api.document(alice, "two")
    await api.error(
        "POST",
        "/api/v1/documents",
        user=alice,
        json={"title": "three"},
        expect=403,
        code="too_many_documents",
    )
    await api.document(bob, "bob's")  # a quota per user
    await api.call("DELETE", f"/api/v1/documents/{first['id']}", user=alice, expect=204)
    await api.document(alice, "three")


# --- command rates -------------------------------------------------------------------------


async def test_every_command_class_is_limited_per_connection(
    start_app: AppFactory, connect_on: ConnectOn
) -> None:
    """Each command, sent past its class's burst, is refused ``rate_limited`` with the
    wait; the refusal is free, and payloads are counted before they are parsed (a
    flood of bad ones is limited too)."""
    burst = 3
    overrides: dict[str, Any] = {}
    for kind in COMMAND_CLASSES:
        overrides[f"rate_{kind}_per_second"] = 0.01
        overrides[f"rate_{kind}_burst"] = burst
    client = await start_app(**overrides)
    api = Api(client)
    for i, name in enumerate(commands.names):
        # A user of its own per command: chat:send, chat:edit and chat:delete share
        # the chat buckets.
        room_client = await connect_on(api)(await api.user(f"user{i}"))
        sio = room_client
        for _ in range(burst):
            reply = await ack(sio, name, {})
            assert reply["ok"] is False and reply["error"]["code"] != "rate_limited", (name, reply)
        error = await refused(sio, name, {}, "rate_limited")
        assert 0 < error["details"]["retry_after"] <= 1 / 0.01, error
        await room_client.close()
    # Unknown events count too (in the room class): their error answers are bounded.
    room_client = await connect_on(api)(await api.user("stranger"))
    for _ in range(burst):
        await refused(room_client, "no:such:event", {}, "unknown_event")
    await refused(room_client, "no:such:event", {}, "rate_limited")


async def test_a_chat_flood_is_refused_and_the_client_may_send_again_after_the_wait(
    start_app: AppFactory, connect_on: ConnectOn
) -> None:
    client = await start_app(rate_chat_per_second=4, rate_chat_burst=5)
    api = Api(client)
    alice = await api.user("alice")
    doc = (await api.document(alice))["id"]
    room_client = await connect_on(api)(alice)
    await room_client.join(doc)
    sio = room_client
    outcomes = []
    for i in range(30):  # the review sent 150 in 0.57 s; all were stored
        reply = await ack(
            sio, "chat:send", {"document_id": doc, "client_msg_id": f"m{i}", "text": "hi"}
        )
        outcomes.append(reply["ok"] or reply["error"]["code"])
    assert outcomes.count(True) < 10, outcomes
    assert set(outcomes) == {True, "rate_limited"}, outcomes
    history = await ack(sio, "chat:history", {"document_id": doc, "limit": 100})
    assert len(history["data"]["messages"]) == outcomes.count(True)

    error = await refused(
        sio,
        "chat:send",
        {"document_id": doc, "client_msg_id": "late", "text": "hi"},
        "rate_limited",
    )
    # The wait the error gives, and a few ms more: the event loop's timers may fire
    # early by up to a millisecond (uvloop's clock is libuv's, read once a loop turn),
    # and a send right after it was refused again once (a CI run on 2026-12-06).
    await asyncio.sleep(error["details"]["retry_after"] + 0.005)
    reply = await ack(sio, "chat:send", {"document_id": doc, "client_msg_id": "late", "text": "hi"})
    assert reply["ok"] is True, reply


def test_a_connection_holds_a_bucket_only_for_the_classes_it_has_sent() -> None:
    """A connection's bucket of a class is made on its first command of the class, as
    full as one made at connect: the same burst, and nothing held for the rest."""
    limits = CommandLimits({"chat": Rate(0.01, 3), "room": Rate(0.01, 3)}, user_factor=10)
    buckets, user = limits.connection_buckets(), uuid.uuid4()
    assert not buckets
    waits = [limits.take(buckets, user, "chat") for _ in range(4)]
    assert waits[:3] == [0, 0, 0] and waits[3] > 0
    assert list(buckets) == ["chat"]


async def test_more_connections_do_not_give_a_user_more_rate(
    start_app: AppFactory, connect_on: ConnectOn
) -> None:
    client = await start_app(rate_typing_per_second=0.01, rate_typing_burst=4, rate_user_factor=1)
    api = Api(client)
    alice, bob = await api.user("alice"), await api.user("bob")
    doc = (await api.document(alice))["id"]
    await api.share(alice, doc, bob, "editor")
    tabs = [await connect_on(api)(alice) for _ in range(3)]
    watcher = await connect_on(api)(bob)
    await watcher.join(doc)
    for tab in tabs:
        await tab.join(doc)
    # Toggling typing used to go around its throttle: every toggle was broadcast.
    outcomes = []
    for i in range(12):
        reply = await ack(tabs[i % 3], "typing", {"document_id": doc, "typing": i % 2 == 0})
        outcomes.append(reply["ok"] or reply["error"]["code"])
    assert outcomes[:4] == [True] * 4, outcomes
    assert set(outcomes[4:]) == {"rate_limited"}, outcomes
    # Bob sees at most what was accepted.
    await watcher.join(doc)
    typing_events = [data for event, data in watcher.events if event == "typing"]
    assert len(typing_events) <= 4, typing_events
