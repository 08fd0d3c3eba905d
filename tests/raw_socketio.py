"""A Socket.IO client written by hand over one TCP socket: it reads only when told to.

The clients of python-socketio and socket.io-client read whatever arrives; this one
stops, as a frozen tab or a client on a dead link does, so that the server's handling
of a slow reader can be tested. Its socket's receive buffer is small, so the server
feels the stop within kilobytes. Frames from the server are parsed by hand (RFC 6455
§5.2: unmasked, never fragmented by this server); frames to it are masked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Self

RECEIVE_BUFFER = 4096
ACK_TIMEOUT = 10.0


@dataclass
class Closed:
    """The connection ended: a close frame's code and reason, or None for EOF/reset."""

    code: int | None
    reason: str = ""


@dataclass
class RawClient:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    eio_sid: str
    sids: dict[str, str] = field(default_factory=dict)  # namespace -> Socket.IO sid
    _next_ack: int = 0

    @classmethod
    async def connect(
        cls, port: int, token: str | None, *, receive_buffer: int = RECEIVE_BUFFER
    ) -> Self:
        """Open a websocket to 127.0.0.1:``port`` and connect the default namespace
        with ``token`` (with None, no namespace)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        # A small limit: the stream stops reading the socket once this much waits.
        reader, writer = await asyncio.open_connection(sock=sock, limit=receive_buffer)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        client = cls(reader, writer, eio_sid="")
        opened = await client.receive()
        assert isinstance(opened, str) and opened.startswith("0"), opened
        client.eio_sid = json.loads(opened[1:])["sid"]
        if token is not None:
            await client.connect_namespace("/", token)
        return client

    async def connect_namespace(self, namespace: str, token: str) -> None:
        prefix = "" if namespace == "/" else f"{namespace},"
        await self.send_text("40" + prefix + json.dumps({"token": token}))
        while True:
            message = await self.receive()
            if isinstance(message, str) and message.startswith("40" + prefix):
                self.sids[namespace] = json.loads(message[2 + len(prefix) :])["sid"]
                return

    # --- out ----------------------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        self.writer.write(_masked(0x1, text.encode()))
        await self.writer.drain()

    async def send_binary(self, data: bytes) -> None:
        """One binary frame: an attachment of the binary packet sent just before."""
        self.writer.write(_masked(0x2, data))
        await self.writer.drain()

    async def emit(self, event: str, payload: Any, *, ack: bool = True) -> int | None:
        """Send an event on the default namespace; its ack id (the answer arrives among
        the received messages as ``43<id>[...]``)."""
        ack_id = None
        if ack:
            self._next_ack += 1
            ack_id = self._next_ack
        await self.send_text(f"42{ack_id or ''}" + json.dumps([event, payload]))
        return ack_id

    async def call(self, event: str, payload: Any) -> tuple[Any, list[tuple[str, Any]]]:
        """Emit and read until the ack (at most ``ACK_TIMEOUT`` s): its payload and the
        events that came before it."""
        ack_id = await self.emit(event, payload)
        events: list[tuple[str, Any]] = []
        async with asyncio.timeout(ACK_TIMEOUT):
            while True:
                message = await self.receive()
                if isinstance(message, Closed):
                    raise ConnectionError(f"closed while waiting for the ack: {message}")
                if isinstance(message, str) and message.startswith(f"43{ack_id}["):
                    return json.loads(message[2 + len(str(ack_id)) :])[0], events
                if isinstance(message, str) and message.startswith("42["):
                    name, *args = json.loads(message[2:])
                    events.append((name, args[0] if args else None))

    # --- in -----------------------------------------------------------------------------

    async def receive(self) -> str | bytes | Closed:
        """The next Engine.IO message (pings answered on the way), or ``Closed``."""
        while True:
            try:
                first, second = await self.reader.readexactly(2)
            except (asyncio.IncompleteReadError, ConnectionError):
                return Closed(None)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            try:
                payload = await self.reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError):
                return Closed(None)
            opcode = first & 0x0F
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return Closed(code, payload[2:].decode())
            if opcode == 0x2:
                return payload
            text = payload.decode()
            if text == "2":  # an Engine.IO ping
                await self.send_text("3")
                continue
            return text

    async def events(self, *, until: float) -> tuple[list[tuple[str, Any]], Closed | None]:
        """Every default-namespace event received until the connection ends or ``until``
        seconds pass without a message: ``[(name, payload)]`` and how it ended."""
        events: list[tuple[str, Any]] = []
        while True:
            try:
                message = await asyncio.wait_for(self.receive(), until)
            except TimeoutError:
                return events, None
            if isinstance(message, Closed):
                return events, message
            if isinstance(message, str) and message.startswith("42["):
                name, *args = json.loads(message[2:])
                events.append((name, args[0] if args else None))

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client's frame: FIN, ``opcode``, masked payload (RFC 6455 §5.3)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    key = int.from_bytes(mask * (length // 4 + 1))
    masked = (int.from_bytes(payload) ^ (key >> (8 * (4 - length % 4)))).to_bytes(length)
    return header + mask + masked
