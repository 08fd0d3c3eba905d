"""WebSocket connections, taken over from aiohttp once the handshake is answered.

aiohttp parses the HTTP upgrade request and writes the ``101`` answer; then the TCP
transport is handed to a ``WebSocketConnection``, a plain asyncio protocol. Frames
in are parsed by wsproto, but for the frames clients send nearly always (whole,
masked text or binary frames, no extension), which ``_read_simple_frames`` parses at
a twentieth of wsproto's cost until another kind arrives; frames out are written as
they come, most of them built once for a whole room (delivery/encoding.py).
aiohttp's per-request state (the request, its headers, two tasks, its websocket
reader and writer: 14 KiB of an idle connection, measured) is released, and no task
waits per connection: the transport calls back when data arrives and when it can take
more.

The seams with aiohttp's internals are ``detach`` and its C ``websocket_mask``
(tests/test_engine_seams.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import Protocol, cast

from aiohttp import hdrs, web
from aiohttp._websocket.helpers import websocket_mask
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, generate_accept_token

log = logging.getLogger(__name__)

# After our close frame, how long the peer has to answer it (and to read what was
# still buffered for it) before the TCP connection is aborted.
CLOSE_TIMEOUT_SECONDS = 5.0


class Listener(Protocol):
    """What a connection reports to (the Engine.IO socket)."""

    def on_message(self, data: str | bytes) -> None: ...

    def on_closing(self, connection: WebSocketConnection) -> None: ...

    def on_closed(self, connection: WebSocketConnection) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...


class WebSocketConnection(asyncio.Protocol):
    """One websocket: wsproto for what arrives, the transport for what leaves."""

    def __init__(self, max_message_bytes: int, extensions: list[Extension] | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        self.transport: asyncio.Transport | None = None
        self.listener: Listener | None = None
        self._ws = Connection(ConnectionType.SERVER, extensions)
        self.compressed = bool(extensions)  # permessage-deflate negotiated (compression.py)
        self._text: list[str] = []
        self._binary: list[bytes] = []
        self._size = 0
        self._early = b""  # what arrived before anyone listened
        # Until another kind of frame arrives, frames are read here, not by wsproto
        # (which then reads every later byte: it alone knows fragments, control
        # frames, extensions and protocol errors). _partial: a frame's first bytes.
        self._simple = not extensions
        self._partial = b""
        self._abort: asyncio.TimerHandle | None = None
        self._closing = False  # our close frame is sent (or the transport is closing)

    def listen(self, listener: Listener) -> None:
        self.listener = listener
        if self._early:
            early, self._early = self._early, b""
            self.data_received(early)

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: uvloop's is one without deriving from asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._ws.state is ConnectionState.CLOSED:
            return
        if self.listener is None:
            self._early += data
            return
        if self._simple:
            data = self._read_simple_frames(data)
            if not data:
                return
            self._simple = False
        self._ws.receive_data(data)
        for event in self._ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                self._message(event.data, event.message_finished)
            elif isinstance(event, Ping):
                self._send(event.response())
            elif isinstance(event, CloseConnection):
                # The peer's close (answered), or a frame wsproto could not parse.
                self.close(event.code, event.reason or "")
                return

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort is not None:
            self._abort.cancel()
            self._abort = None
        self.transport = None
        if self.listener is not None:
            listener, self.listener = self.listener, None
            listener.on_closed(self)

    def pause_writing(self) -> None:
        if self.listener is not None:
            self.listener.pause_writing()

    def resume_writing(self) -> None:
        if self.listener is not None:
            self.listener.resume_writing()

    # --- ours -------------------------------------------------------------------------

    def _read_simple_frames(self, data: bytes) -> bytes:
        """Read the whole, masked, unfragmented text and binary frames without RSV bits
        (RFC 6455 §5.2) at the start of ``data``, keep a partial one for later, and
        return what follows from the first frame of any other kind (wsproto's to read:
        it costs ~12 µs a frame, measured, this under 1)."""
        if self._partial:
            data, self._partial = self._partial + data, b""
        offset, end = 0, len(data)
        while end - offset >= 2:
            first, second = data[offset], data[offset + 1]
            opcode = first & 0x0F
            if first & 0xF0 != 0x80 or opcode not in (1, 2) or not second & 0x80:
                return data[offset:]  # a fragment, a control frame, RSV bits, unmasked
            length, start = second & 0x7F, offset + 6
            if length == 127:
                return data[offset:]  # 64 KiB and more: wsproto's
            if length == 126:
                if end - offset < 4:
                    break
                length, start = int.from_bytes(data[offset + 2 : offset + 4]), offset + 8
            if end < start + length:
                break
            payload = bytearray(data[start : start + length])
            websocket_mask(data[start - 4 : start], payload)
            message: str | bytes
            if opcode == 1:
                try:
                    message = payload.decode()
                except UnicodeDecodeError:
                    return data[offset:]  # wsproto closes with 1007
            else:
                message = bytes(payload)
            offset = start + length
            self._message(message, True)
            if self._closing or self.listener is None:
                return b""
        self._partial = data[offset:]
        return b""

    def _message(self, data: str | bytes | bytearray, finished: bool) -> None:
        """A frame's payload (wsproto hands over what it has; a message may span many)."""
        self._size += len(data)
        if self._size > self.max_message_bytes:
            self.close(CloseReason.MESSAGE_TOO_BIG, "message too big")
            return
        message: str | bytes
        if isinstance(data, str):
            if finished and not self._text:
                message = data
            else:
                self._text.append(data)
                if not finished:
                    return
                message, self._text = "".join(self._text), []
        elif finished and not self._binary:
            message = bytes(data)
        else:
            self._binary.append(bytes(data))
            if not finished:
                return
            message, self._binary = b"".join(self._binary), []
        self._size = 0
        # Nothing more is taken once we closed (a failed upgrade, a slow consumer...).
        if self.listener is not None and not self._closing:
            self.listener.on_message(message)

    def _send(self, event: CloseConnection | Pong) -> None:
        if self.transport is None:
            return
        try:
            self.transport.write(self._ws.send(event))
        except LocalProtocolError:  # the state no longer allows it (already closing)
            pass

    def close(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame (or answer the peer's), close the TCP connection once
        what is buffered went out, abort it if that takes too long."""
        if self.transport is None or self._closing:
            return
        self._closing = True
        if self.listener is not None:
            self.listener.on_closing(self)  # nothing may follow the close frame
        if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._send(CloseConnection(code=code, reason=reason))
        self.transport.close()
        if self.transport is not None:  # close() may have called connection_lost already
            loop = asyncio.get_running_loop()
            self._abort = loop.call_later(CLOSE_TIMEOUT_SECONDS, self.abort)

    def abort(self) -> None:
        self._abort = None
        if self.transport is not None:
            self.transport.abort()


# --- the handshake -----------------------------------------------------------------------


class SwitchingProtocols(web.StreamResponse):
    """aiohttp's side of an upgraded connection: the ``101`` and nothing after it."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__(status=101, headers=headers)
        self.force_close()  # aiohttp keeps no keep-alive state for it

    async def write_eof(self, data: bytes = b"") -> None:
        return None  # the socket belongs to the WebSocketConnection now


def handshake_error(request: web.Request) -> str | None:
    """Why ``request`` is not a valid WebSocket upgrade (RFC 6455 §4.2.1), or None."""
    if request.method != "GET":
        return "websocket upgrades are GET requests"
    if request.headers.get(hdrs.UPGRADE, "").lower() != "websocket":
        return "no 'Upgrade: websocket' header"
    connection = {
        token.strip().lower() for token in request.headers.get(hdrs.CONNECTION, "").split(",")
    }
    if "upgrade" not in connection:
        return "no 'Connection: upgrade' header"
    if request.headers.get(hdrs.SEC_WEBSOCKET_VERSION) != "13":
        return "only WebSocket version 13 is supported"
    try:
        key = base64.b64decode(request.headers.get(hdrs.SEC_WEBSOCKET_KEY, ""), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != 16:
        return "a bad Sec-WebSocket-Key"
    return None


async def upgrade(
    request: web.Request, connection: WebSocketConnection, extensions: str | None = None
) -> web.StreamResponse:
    """Answer the upgrade and hand the transport to ``connection``; 400 if invalid.

    ``extensions``: the ``Sec-WebSocket-Extensions`` answer, when one was negotiated.
    """
    error = handshake_error(request)
    if error is not None:
        return web.Response(status=400, text=error)
    key = request.headers[hdrs.SEC_WEBSOCKET_KEY].encode()
    headers: dict[str, str] = {
        hdrs.UPGRADE: "websocket",
        hdrs.CONNECTION: "Upgrade",
        hdrs.SEC_WEBSOCKET_ACCEPT: generate_accept_token(key).decode(),
    }
    if extensions:
        headers[hdrs.SEC_WEBSOCKET_EXTENSIONS] = extensions
    response = SwitchingProtocols(headers)
    await response.prepare(request)
    detach(request, connection)
    return response


def detach(request: web.Request, connection: WebSocketConnection) -> None:
    """Move the request's TCP transport from aiohttp to ``connection``.

    aiohttp stops reading and writing it, and forgets it: its server no longer
    counts the connection, and when the handler returns, the request is finished
    without closing the transport. What arrives before ``connection`` has a listener
    waits for it.
    """
    handler = request.protocol  # aiohttp's RequestHandler for this TCP connection
    transport = request.transport
    assert transport is not None and handler is not None
    # Bytes that came after the request head (a client need not wait for the 101).
    tail: bytes = handler._message_tail
    handler._message_tail = b""
    transport.set_protocol(connection)
    handler.transport = None  # aiohttp's end of the request closes nothing now
    handler.keep_alive(False)  # and its idle-connection timer goes (it held the handler)
    manager = handler._manager  # aiohttp's web.Server: stop tracking the connection
    if manager is not None:
        manager.connection_lost(handler, None)
    connection.connection_made(transport)
    transport.resume_reading()  # aiohttp may have paused it
    if tail:
        connection.data_received(tail)
