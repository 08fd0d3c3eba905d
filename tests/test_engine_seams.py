"""The seams where realtime/engine and realtime/delivery use library internals.

pyproject.toml pins aiohttp, python-engineio and python-socketio to the minor
versions these were written against. Each test here fails when one seam moves: a
method we override changes its signature, an attribute we read is gone, or the
behaviour we rely on changes. Widen a pin only with this module green.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import uuid
from typing import Any

import engineio
import pytest
import socketio
from aiohttp import web
from aiohttp.test_utils import TestClient

from realtime.delivery.manager import DeliveryManager
from realtime.engine.server import EngineServer, _WebSocketUpgrade
from realtime.engine.socket import EngineSocket
from realtime.namespaces import main as main_namespace
from realtime.server import RoomServer
from tests.conftest import AppFactory, ConnectOn
from tests.helpers import Api, equal, eventually, truthy
from tests.raw_socketio import RawClient, _masked
from tests.test_delivery_slow import engine_of


def parameters(function: Any) -> list[str]:
    """Parameter names, without ``*args``/``**kwargs`` catch-alls."""
    return [
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]


def overridden(ours: type, theirs: type) -> list[str]:
    """The methods ``ours`` defines that ``theirs`` (or its bases) defines too."""
    return [
        name
        for name, member in vars(ours).items()
        if callable(member) and not name.startswith("__") and hasattr(theirs, name)
    ]


# --- python-socketio and python-engineio: what we override keeps its signature --------

# Ours take *args/**kwargs where the library's method is only refused (emit, rooms).
REFUSED = {"emit", "enter_room", "leave_room", "close_room", "get_rooms", "send", "call"}


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (DeliveryManager, socketio.AsyncManager),
        (RoomServer, socketio.AsyncServer),
        (EngineServer, engineio.AsyncServer),
        (EngineSocket, engineio.async_socket.AsyncSocket),
    ],
    ids=["manager", "socketio-server", "engineio-server", "engineio-socket"],
)
def test_overrides_match_the_library_signatures(ours: type, theirs: type) -> None:
    names = [name for name in overridden(ours, theirs) if name not in REFUSED]
    assert names, "nothing overridden: the seam moved or this test is stale"
    for name in names:
        assert parameters(getattr(ours, name)) == parameters(getattr(theirs, name)), name


def test_the_library_calls_what_we_replace() -> None:
    # python-engineio picks the websocket handler from its async driver table and
    # creates sockets in _handle_connect; python-socketio asks its manager for these.
    assert "websocket" in engineio.AsyncServer(async_mode="aiohttp")._async
    assert "await self._handle_connect(environ, transport," in inspect.getsource(
        engineio.AsyncServer.handle_request
    )
    socket_source = inspect.getsource(engineio.async_socket.AsyncSocket)
    assert "self.server._async['websocket'](\n            self._websocket_handler" in (
        socket_source
    )
    for name in ("pre_connect", "is_connected", "sid_from_eio_sid", "trigger_callback"):
        assert f"manager.{name}(" in inspect.getsource(socketio.AsyncServer), name
    # DeliveryManager.connect calls this one when the transport left during a connect.
    assert parameters(socketio.AsyncServer._handle_disconnect) == [
        "self",
        "eio_sid",
        "namespace",
        "reason",
    ]


def test_what_the_event_path_copies_and_borrows_is_still_there() -> None:
    # RoomServer._handle_event replaces python-socketio's, which the library must still
    # call with each event packet, a binary one once its attachments are in.
    source = inspect.getsource(socketio.AsyncServer._handle_eio_message)
    assert source.count("await self._handle_event(eio_sid, pkt.namespace, pkt.id,") == 2
    assert parameters(socketio.AsyncServer._handle_event) == [
        "self",
        "eio_sid",
        "namespace",
        "id",
        "data",
    ]
    # Events on documents' namespaces are still handled and acked by the library's.
    assert parameters(socketio.AsyncServer._handle_event_internal) == [
        "self",
        "server",
        "sid",
        "eio_sid",
        "data",
        "namespace",
        "id",
    ]
    # EngineServer.on_message calls the handler python-socketio registered with its engine.
    assert "self.eio.on('message', self._handle_eio_message)" in inspect.getsource(
        socketio.base_server.BaseServer.__init__
    )
    # WebSocketConnection unmasks simple frames with aiohttp's C helper, in place.
    from aiohttp._websocket.helpers import websocket_mask

    payload = bytearray(b"\x0f\xf0\x00\xff\x01")
    websocket_mask(b"\xff\x0f\xf0\x00", payload)
    assert payload == bytearray(b"\xf0\xff\xf0\xff\xfe")


async def test_connections_are_ours_on_both_transports(
    client: TestClient[web.Request, web.Application], connect_on: ConnectOn
) -> None:
    engine = engine_of(client)
    assert engine._async["websocket"] is _WebSocketUpgrade
    # No monitor task (each socket's timers enforce pings), and none started.
    assert engine.start_service_task is False and engine.service_task_handle is None
    api = Api(client)
    user = await api.user("ann")
    websocket = await connect_on(api)(user)
    polling = await connect_on(api)(user, transports=["polling"])
    assert len(engine.sockets) == 2
    for socket in engine.sockets.values():
        assert isinstance(socket, EngineSocket)
    assert {s.upgraded for s in engine.sockets.values()} == {True, False}
    assert websocket.connected and polling.connected


async def test_python_socketio_emit_and_rooms_are_refused(
    client: TestClient[web.Request, web.Application],
) -> None:
    engine = engine_of(client)
    sio = next(
        h.__self__
        for h in engine.handlers.values()
        if isinstance(getattr(h, "__self__", None), RoomServer)
    )
    with pytest.raises(NotImplementedError):
        await sio.emit("chat:message", {})
    with pytest.raises(NotImplementedError):
        await sio.enter_room("sid", "room")
    with pytest.raises(NotImplementedError):
        await sio.manager.emit("chat:message", {}, namespace="/")


# --- aiohttp: the websocket handed over after its 101 -------------------------------


async def test_aiohttp_forgets_an_upgraded_connection(
    client: TestClient[web.Request, web.Application],
) -> None:
    """``detach``: aiohttp no longer counts it (nor closes it on shutdown or idle)."""
    api = Api(client)
    user = await api.user("ann")
    assert client.server.runner is not None
    server = client.server.runner.server
    assert isinstance(server, web.Server)
    before = server.connections  # the test client's keep-alive connections
    raw = await RawClient.connect(client.port, user.access_token)
    [connection] = [s for s in engine_of(client).sockets.values() if s.sid == raw.eio_sid]
    assert connection.websocket is not None and connection.websocket.transport is not None
    await eventually(lambda: equal(server.connections, before))
    assert connection.websocket.transport not in server._connections.values()
    # Still served: by us, now that aiohttp has forgotten it.
    ack, _ = await raw.call("auth:refresh", {"token": user.access_token})
    assert ack["ok"] is True
    await raw.close()


async def test_frames_sent_with_the_upgrade_request_are_not_lost(
    client: TestClient[web.Request, web.Application],
) -> None:
    """aiohttp keeps bytes after the request head in ``_message_tail``; ``detach``
    hands them to the websocket."""
    api = Api(client)
    user = await api.user("ann")
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{client.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    connect = _masked(0x1, ("40" + json.dumps({"token": user.access_token})).encode())
    writer.write(head + connect)  # one write: the frame rides with the request
    client_side = RawClient(reader, writer, eio_sid="")
    try:
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        opened = await client_side.receive()
        assert isinstance(opened, str) and opened.startswith("0")
        connected = await asyncio.wait_for(client_side.receive(), 5)
        assert isinstance(connected, str) and connected.startswith("40{"), connected
    finally:
        await client_side.close()


async def test_an_event_read_while_the_connect_awaits_is_handled_after_it(
    client: TestClient[web.Request, web.Application], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events are handled in the turn that read them only while nothing else is being
    handled (EngineSocket.on_message): one read while the namespace connect awaits its
    authentication waits for it, and is answered."""
    api = Api(client)
    user = await api.user("ann")
    entered, release = asyncio.Event(), asyncio.Event()
    authenticate = main_namespace.authenticate

    async def held(*args: Any) -> Any:
        entered.set()
        await release.wait()
        return await authenticate(*args)

    monkeypatch.setattr(main_namespace, "authenticate", held)
    raw = await RawClient.connect(client.port, None)
    try:
        await raw.send_text("40" + json.dumps({"token": user.access_token}))
        await asyncio.wait_for(entered.wait(), 5)
        await raw.send_text("421" + json.dumps(["auth:refresh", {"token": user.access_token}]))
        # Read by the server while the connect waits: queued behind it, not handled.
        socket = engine_of(client).sockets[raw.eio_sid]
        await eventually(lambda: truthy(list(socket._inbox)))
        release.set()
        seen: list[str] = []
        async with asyncio.timeout(5):
            while not (seen and seen[-1].startswith("431")):
                message = await raw.receive()
                assert isinstance(message, str), message
                seen.append(message)
        assert seen[0].startswith("40{")
        assert json.loads(seen[-1][3:])[0]["ok"] is True
    finally:
        await raw.close()


async def test_handshake_errors_are_answered_by_http(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get(
        "/socket.io/",
        params={"EIO": "4", "transport": "websocket"},
        headers={"Upgrade": "websocket", "Connection": "Upgrade"},
    )
    assert response.status == 400  # no key, no version: not an upgrade


# --- connections that end at awkward moments --------------------------------------------


async def test_a_transport_gone_during_the_namespace_connect_leaves_nothing_behind(
    client: TestClient[web.Request, web.Application],
) -> None:
    """python-socketio skips a namespace that is still connecting when its transport
    closes; DeliveryManager.connect runs its disconnect once the handler is done."""
    api = Api(client)
    user = await api.user("ann")
    doc = await api.document(user)
    engine = engine_of(client)
    for namespace in ("/", f"/yjs|{doc['id']}"):
        raw = await RawClient.connect(client.port, user.access_token)
        prefix = "" if namespace == "/" else f"{namespace},"
        # The connect and the end of the TCP connection in one go: the handler is still
        # reading the database when the transport closes.
        raw.writer.write(
            _masked(0x1, f"40{prefix}{json.dumps({'token': user.access_token})}".encode())
        )
        raw.writer.close()
        await eventually(lambda: equal(len(engine.sockets), 0))
    sio = next(
        h.__self__
        for h in engine.handlers.values()
        if isinstance(getattr(h, "__self__", None), RoomServer)
    )
    manager: DeliveryManager = sio.manager
    await eventually(
        lambda: equal((manager._sids, manager._by_eio, manager._connecting), ({}, {}, set()))
    )
    assert manager.delivery.members(("user", uuid.UUID(user.id))) == []


async def test_a_vanished_long_polling_client_is_forgotten(start_app: AppFactory) -> None:
    """No monitor task: a polling socket that stops polling is closed by its ping
    timer and dropped from the server's table once its close packet is not collected."""
    client = await start_app(socket_ping_interval_seconds=0.2, socket_ping_timeout_seconds=0.2)
    api = Api(client)
    user = await api.user("ann")
    response = await client.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
    opened = json.loads((await response.text())[1:])
    engine = engine_of(client)
    assert opened["sid"] in engine.sockets
    posted = await client.post(
        "/socket.io/",
        params={"EIO": "4", "transport": "polling", "sid": opened["sid"]},
        data="40" + json.dumps({"token": user.access_token}),
    )
    assert posted.status == 200
    # It never polls again: no pong, so the ping timeout closes it; then it is dropped.
    await eventually(lambda: equal(engine.sockets, {}), timeout=5)
