"""A reader that stops reading while its room is flooded (docs/protocol.md §5.10).

The slow reader is ``tests/raw_socketio.py``'s client, which reads only when told to.
Its server-side socket gets a small send buffer, so that the server feels the stop
within kilobytes instead of the megabytes a loopback buffer grows to. What the server
holds for it is measured while the room is flooded, from the connection's own outbox
and transport.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from realtime.engine.server import EngineServer
from realtime.engine.socket import EngineSocket
from tests.conftest import AppFactory, ConnectOn, NodePrograms, OpenDocumentOn
from tests.helpers import Api, equal, eventually, truthy
from tests.js_client import JsClient
from tests.raw_socketio import RawClient, _masked
from tests.test_socket_connect import metric
from tests.yjs_js import YjsJsClient

MAX_BUFFERED = 32 * 1024
MESSAGE = "x" * 3000  # a chat message of about 3 KiB on the wire
# What the transport may hold above its high-water mark (asyncio's default, 64 KiB)
# when it asks to pause: one more event at most (each send here is one event per turn).
HIGH_WATER = 64 * 1024
SEND_BUFFER = 4096


def engine_of(client: TestClient[web.Request, web.Application]) -> EngineServer:
    """The app's Engine.IO server (the handler of its /socket.io/ route)."""
    for route in client.app.router.routes():
        owner = getattr(route.handler, "__self__", None)
        if isinstance(owner, EngineServer):
            return owner
    raise AssertionError("no Engine.IO route")


def websockets_of(client: TestClient[web.Request, web.Application]) -> list[EngineSocket]:
    """The app's websocket connections, each with a small server-side send buffer."""
    connections = []
    for connection in engine_of(client).sockets.values():
        assert isinstance(connection, EngineSocket)
        if connection.websocket is not None and connection.websocket.transport is not None:
            sock = connection.websocket.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            connections.append(connection)
    return connections


def held_for(connection: EngineSocket) -> int:
    """Bytes the server holds for one connection: its outbox and its transport."""
    assert connection.websocket is not None
    transport = connection.websocket.transport
    in_transport = transport.get_write_buffer_size() if transport is not None else 0
    return connection.outbox.buffered_bytes + in_transport


async def slow_reader(
    client: TestClient[web.Request, web.Application], token: str, document_id: str
) -> tuple[RawClient, EngineSocket]:
    """A raw client joined to ``document_id`` whose server-side send buffer is small."""
    raw = await RawClient.connect(client.port, token)
    ack, _ = await raw.call("join", {"document_id": document_id})
    assert ack["ok"], ack
    [connection] = [c for c in websockets_of(client) if c.sid == raw.eio_sid]
    return raw, connection


def chat_seqs(events: list[tuple[str, Any]]) -> list[int]:
    return [int(data["message"]["seq"]) for name, data in events if name == "chat:message"]


async def test_a_reader_that_stops_is_closed_and_catches_up_on_return(
    start_app: AppFactory, connect_on: ConnectOn
) -> None:
    client = await start_app(delivery_max_buffered_bytes=MAX_BUFFERED)
    api = Api(client)
    owner, member, doc = await api.room()
    watcher_user = await api.user("wendy")
    await api.share(owner, doc["id"], watcher_user, "viewer")
    sender = await connect_on(api)(owner)
    await sender.join(doc["id"])
    watcher = await connect_on(api)(watcher_user)
    await watcher.join(doc["id"])
    raw, connection = await slow_reader(client, member.access_token, doc["id"])

    # The flood: the raw client reads nothing from here on.
    sent: list[int] = []
    peak = 0
    for i in range(400):
        ack = await sender.send(doc["id"], f"{i:03d} {MESSAGE}")
        sent.append(ack["seq"])
        if connection.outbox.closed:
            break
        peak = max(peak, held_for(connection))
    assert connection.outbox.closed, "never closed as a slow consumer"
    # Bounded: the outbox's bound, plus what the transport holds at its high-water mark.
    assert MAX_BUFFERED <= peak <= MAX_BUFFERED + HIGH_WATER + 2 * len(MESSAGE), peak
    assert await metric(client, "delivery_slow_consumers_total") == 1
    assert await metric(client, "delivery_dropped_total", **{"class": "chat"}) > 0
    # Everyone else got every message, in order.
    await eventually(lambda: equal(chat_seqs(watcher.events)[-len(sent) :], sent))

    # Reading again: what was written before the close, the notice, the close frame.
    events, closed = await raw.events(until=10)
    await raw.close()
    assert closed is not None and closed.code == 1008 and closed.reason == "slow_consumer"
    notices = [data for name, data in events if name == "session:ended"]
    assert [notice["code"] for notice in notices] == ["slow_consumer"]
    before_close = chat_seqs(events)
    assert before_close == sent[: len(before_close)] and len(before_close) < len(sent)

    # Back: the join catches up on every message it missed, from its last seq on.
    since = before_close[-1] if before_close else sent[0] - 1
    again = await RawClient.connect(client.port, member.access_token)
    ack, live = await again.call("join", {"document_id": doc["id"], "since_seq": since})
    await again.close()
    caught_up = [message["seq"] for message in ack["data"]["messages"]]
    assert before_close + caught_up == sent and not chat_seqs(live)


async def test_a_slow_reader_gets_the_latest_presence_and_typing_not_their_history(
    start_app: AppFactory, connect_on: ConnectOn
) -> None:
    client = await start_app(delivery_max_buffered_bytes=MAX_BUFFERED)
    api = Api(client)
    owner, member, doc = await api.room()
    sender = await connect_on(api)(owner)
    await sender.join(doc["id"])
    raw, connection = await slow_reader(client, member.access_token, doc["id"])

    # Chat until the transport is full and the outbox queues (below its bound).
    for i in range(100):
        await sender.send(doc["id"], f"{i:03d} {MESSAGE[:1000]}")
        if not connection.outbox.direct:
            break
    assert not connection.outbox.direct and not connection.outbox.closed

    # Then a burst of states: each replaces the one waiting.
    for i in range(300):
        await sender.update_presence(doc["id"], {"cursor": i, "pad": "p" * 1000})
        await sender.set_typing(doc["id"], i % 2 == 0)
    await sender.set_typing(doc["id"], False)
    assert not connection.outbox.closed
    assert connection.outbox.waiting < 100

    assert await metric(client, "delivery_replaced_total", **{"class": "presence"}) >= 299
    assert await metric(client, "delivery_replaced_total", **{"class": "typing"}) >= 299
    events, _ = await raw.events(until=1)
    await raw.close()
    states = [data["state"] for name, data in events if name == "presence:state"]
    typing = [data["typing"] for name, data in events if name == "typing"]
    assert [state["cursor"] for state in states] == [299]
    assert typing == [False]


# --- the official JavaScript clients, paused --------------------------------------------


@pytest.mark.slow
async def test_a_paused_socket_io_client_is_closed_reconnects_and_misses_nothing(
    start_app: AppFactory,
    connect_on: ConnectOn,
    node_programs: NodePrograms,
) -> None:
    client = await start_app(delivery_max_buffered_bytes=MAX_BUFFERED)
    api = Api(client)
    owner, member, doc = await api.room()
    js = await node_programs(JsClient, str(client.make_url("/")).rstrip("/"))
    assert (await js.connect(member.access_token))["connected"]
    await js.command("join", {"document_id": doc["id"]})
    [connection] = websockets_of(client)
    sender = await connect_on(api)(owner)
    await sender.join(doc["id"])

    await js.pause()
    sent: list[int] = []
    for i in range(400):
        sent.append((await sender.send(doc["id"], f"{i:03d} {MESSAGE}"))["seq"])
        if connection.outbox.closed:
            break
    assert connection.outbox.closed, "never closed as a slow consumer"
    await js.resume()

    # socket.io-client hears why, reconnects by itself, and re-joins from its last seq.
    [notice] = await js.wait_event("session:ended", within=10)
    assert notice["code"] == "slow_consumer"
    await js.wait_event("$connect", count=2, within=10)
    before_close = [int(m["message"]["seq"]) for m in await js.events("chat:message")]
    assert before_close == sent[: len(before_close)] and len(before_close) < len(sent)
    since = before_close[-1] if before_close else sent[0] - 1
    joined = await js.command("join", {"document_id": doc["id"], "since_seq": since})
    assert before_close + [m["seq"] for m in joined["messages"]] == sent


@pytest.mark.slow
async def test_a_paused_y_socket_io_provider_gets_merged_updates_and_converges(
    start_app: AppFactory,
    open_document_on: OpenDocumentOn,
    node_programs: NodePrograms,
) -> None:
    client = await start_app(yjs_message_burst=1000)
    api = Api(client)
    owner, member, doc = await api.room()
    provider: YjsJsClient = await node_programs(YjsJsClient, str(client.make_url("/")).rstrip("/"))
    await provider.synced_as(doc["id"], member.access_token)
    [connection] = websockets_of(client)
    writer = await open_document_on(client, owner, doc["id"])

    await provider.pause()
    # Edit until the network buffers are full and the outbox holds what comes next...
    for i in range(400):
        writer.edit(lambda text, i=i: text.insert(len(text), f"<{i:03d}>" + "y" * 2000))
        await asyncio.sleep(0.01)  # one broadcast each
        if not connection.outbox.direct:
            break
    assert not connection.outbox.direct
    # ...then more edits and cursor moves, each its own broadcast.
    for i in range(100):
        writer.edit(lambda text, i=i: text.insert(len(text), f"[{i:03d}]"))
        writer.set_awareness({"user": "ann", "cursor": i})
        await asyncio.sleep(0.005)
    # Everything the writer sent was applied (and so handed to delivery).
    await eventually(lambda: _equal_text(api, owner, doc["id"], writer.text), timeout=20)
    # What waits for the paused provider is one merged update and one merged awareness.
    assert not connection.outbox.closed and connection.outbox.waiting <= 2
    assert await metric(client, "delivery_merged_total", **{"class": "document"}) > 0
    assert await metric(client, "delivery_merged_total", **{"class": "awareness"}) > 0

    await provider.resume()
    assert await provider.wait_text(writer.text, within=20) == writer.text
    states = await provider.awareness()
    assert {"user": "ann", "cursor": 99} in states.values()


async def _equal_text(api: Api, user: Any, document_id: str, expected: str) -> None:
    body = await api.call("GET", f"/api/v1/documents/{document_id}/content", user=user)
    assert body["text"] == expected


async def test_sync_requests_from_a_reader_that_stops_are_bounded(
    start_app: AppFactory, open_document_on: OpenDocumentOn
) -> None:
    """Each answer is the whole document; a client asking again and again without
    reading is closed rather than holding them all (issue 11, finding 2)."""
    client = await start_app()
    api = Api(client)
    owner, member, doc = await api.room()
    writer = await open_document_on(client, owner, doc["id"])
    for _ in range(3):
        writer.edit(lambda text: text.insert(len(text), "z" * 450_000))
    await eventually(lambda: _equal_text(api, owner, doc["id"], writer.text), timeout=20)

    namespace = f"/yjs|{doc['id']}"
    raw = await RawClient.connect(client.port, member.access_token)
    await raw.connect_namespace(namespace, member.access_token)
    [connection] = [c for c in websockets_of(client) if c.sid == raw.eio_sid]
    peak = 0
    for ack_id in range(1, 61):  # a binary event: the packet, then its attachment
        placeholder = '{"_placeholder":true,"num":0}'
        await raw.send_text(f'451-{namespace},{ack_id}["sync-step-1",{placeholder}]')
        raw.writer.write(_masked(0x2, b"\x00"))
        await raw.writer.drain()
        await asyncio.sleep(0.005)
        peak = max(peak, held_for(connection))
    await eventually(lambda: truthy(connection.outbox.closed))
    await raw.close()
    assert await metric(client, "delivery_slow_consumers_total") == 1
    # At most the answer being written, the bound, and the transport's share.
    assert peak < 2 * 1_400_000 + (1 << 20) + HIGH_WATER, peak
