"""permessage-deflate, when WEBSOCKET_COMPRESSION turns it on (realtime/engine/compression.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import zlib
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from realtime.delivery.encoding import COMPRESS_FROM_BYTES, encode_event
from realtime.engine.compression import negotiate
from tests.conftest import AppFactory, ConnectOn, NodePrograms
from tests.helpers import Api, User, eventually, truthy
from tests.js_client import JsClient
from tests.raw_socketio import RawClient, _masked
from tests.test_delivery_slow import websockets_of


@pytest.mark.parametrize(
    ("offer", "accepted"),
    [
        ("permessage-deflate; client_max_window_bits", True),  # browsers, Node's ws
        ("permessage-deflate", True),
        ("permessage-deflate; server_max_window_bits=15", True),
        ("permessage-deflate; server_max_window_bits=10", False),  # one window for all
        ("permessage-deflate; server_max_window_bits=10, permessage-deflate", True),
        ("x-webkit-deflate-frame", False),
        ("permessage-deflate; client_max_window_bits=x", False),  # malformed
        ("permessage-deflate; server_max_window_bits=15; server_max_window_bits=9", False),
    ],
)
def test_negotiation_asks_for_no_context_takeover_both_ways(offer: str, accepted: bool) -> None:
    negotiated = negotiate(offer, 1_000_000)
    assert (negotiated is not None) is accepted
    if negotiated is not None:
        answer = negotiated[1]
        assert answer.startswith("permessage-deflate;")
        assert "server_no_context_takeover" in answer and "client_no_context_takeover" in answer


def test_a_broadcast_is_compressed_once_and_small_ones_not_at_all() -> None:
    small = encode_event("/", "chat:message", {"text": "hi"})
    assert small.deflated() is small.frames
    large = encode_event("/", "chat:message", {"text": "lorem ipsum " * 200})
    deflated = large.deflated()
    assert deflated is large.deflated()  # built once, for every recipient
    assert deflated[0] == 0x80 | 0x40 | 0x1 and len(deflated) < large.size // 4
    header = 4 if deflated[1] == 126 else 2
    inflated = zlib.decompressobj(-15).decompress(deflated[header:] + b"\x00\x00\xff\xff")
    assert inflated == large.packets[0].encode().encode()


@pytest.fixture
async def client(start_app: AppFactory) -> TestClient[web.Request, web.Application]:
    return await start_app(websocket_compression=True)


@pytest.mark.slow
async def test_socket_io_client_negotiates_it_and_large_messages_flow_both_ways(
    client: TestClient[web.Request, web.Application],
    node_programs: NodePrograms,
    connect_on: ConnectOn,
) -> None:
    api = Api(client)
    node_js = await node_programs(JsClient, str(client.make_url("/")).rstrip("/"))
    owner, member, doc = await api.room()
    assert (await node_js.connect(member.access_token))["connected"]  # offers it by default
    await node_js.command("join", {"document_id": doc["id"]})
    [js_connection] = websockets_of(client)
    assert js_connection.outbox.deflate
    python = await connect_on(api)(owner)  # aiohttp's client offers no compression
    await python.join(doc["id"])
    assert [c.outbox.deflate for c in websockets_of(client)].count(True) == 1

    text = "the plan, in full: " + "step " * 600
    assert len(text.encode()) > COMPRESS_FROM_BYTES
    await python.send(doc["id"], text)  # out to the JS client compressed
    [message] = await node_js.wait_event("chat:message")
    assert message["message"]["text"] == text
    sent = await node_js.command(  # in from the JS client compressed
        "chat:send", {"document_id": doc["id"], "client_msg_id": "big", "text": text[::-1]}
    )
    assert sent["seq"] == 2
    await eventually(lambda: truthy(2 in seqs(python.events)))


def seqs(events: list[tuple[str, dict[str, Any]]]) -> list[int]:
    return [data["message"]["seq"] for name, data in events if name == "chat:message"]


async def test_a_compressed_bomb_closes_the_connection_before_it_inflates(
    client: TestClient[web.Request, web.Application],
) -> None:
    api = Api(client)
    user: User = await api.user("ann")
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{client.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"permessage-deflate" in head.lower()
    raw = RawClient(reader, writer, eio_sid="")
    try:
        await raw.receive()  # the Engine.IO open packet
        await raw.send_text("40" + json.dumps({"token": user.access_token}))
        await raw.receive()  # the namespace's connect
        # 64 MiB of the same character: 64 KiB compressed, 64x the largest message.
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        bomb = b'42["chat:send",{"text":"' + b"a" * (64 << 20)
        payload = (compressor.compress(bomb) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
        frame = _masked(0x1, payload)
        writer.write(bytes([frame[0] | 0x40]) + frame[1:])  # RSV1: compressed
        while True:
            message = await asyncio.wait_for(raw.receive(), 10)
            if not isinstance(message, str | bytes):
                break
        assert message.code == 1009  # message too big
    finally:
        await raw.close()
