"""Encoding once: what a Socket.IO event becomes on the wire, computed once per event.

An event is a Socket.IO packet (text, plus one attachment per binary payload), each
part an Engine.IO MESSAGE packet, each of those a WebSocket frame. A broadcast builds
all of it once: long-polling connections take the Engine.IO packets, websocket
connections the frames, concatenated, in one write per recipient; connections that
negotiated permessage-deflate (engine/compression.py) the same frames compressed, also
built once.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import orjson
from engineio import packet as eio_packet
from socketio import packet as sio_packet

TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
_FIN = 0x80
_RSV1 = 0x40  # "compressed", on a message's first frame (RFC 7692 §6)
# permessage-deflate: shorter messages go out as they are (as Node's ws does); all
# are compressed with one window size, so one compression serves every recipient.
COMPRESS_FROM_BYTES = 1024
WINDOW_BITS = 15
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def ws_frame(opcode: int, payload: bytes, *, compressed: bool = False) -> bytes:
    """One unmasked, unfragmented WebSocket frame (what a server sends, RFC 6455 §5.2)."""
    first = _FIN | opcode | (_RSV1 if compressed else 0)
    length = len(payload)
    if length < 126:
        return bytes((first, length)) + payload
    if length < 1 << 16:
        return _LEN16.pack(first, 126, length) + payload
    return _LEN64.pack(first, 127, length) + payload


class Encoded:
    """One event or packet ready for any transport."""

    __slots__ = ("_deflated", "_message", "_packets", "frames")

    def __init__(
        self,
        packets: tuple[eio_packet.Packet, ...] | None,
        frames: bytes,
        *,
        message: bytes = b"",
    ) -> None:
        """``packets``, or (None) the UTF-8 of the one MESSAGE packet they are, made
        into it only when a long-polling connection takes it: nearly every recipient is
        a websocket connection, and the packet cost a third of the encoding."""
        self._packets = packets
        self._message = message
        self.frames = frames  # for websocket connections: every part's frame, back to back
        self._deflated: bytes | None = None

    @property
    def packets(self) -> tuple[eio_packet.Packet, ...]:
        """The Engine.IO packets, for long-polling responses."""
        if self._packets is None:
            self._packets = (eio_packet.Packet(eio_packet.MESSAGE, self._message.decode()),)
        return self._packets

    @property
    def size(self) -> int:
        return len(self.frames)

    def deflated(self) -> bytes:
        """``frames`` for a connection with permessage-deflate: the large ones compressed."""
        if self._deflated is None:
            if self.size < COMPRESS_FROM_BYTES:
                self._deflated = self.frames
            else:
                self._deflated = b"".join(_frame(packet, deflate=True) for packet in self.packets)
        return self._deflated


def _frame(packet: eio_packet.Packet, *, deflate: bool = False) -> bytes:
    data = packet.encode()
    payload, opcode = (data, BINARY) if isinstance(data, bytes) else (data.encode(), TEXT)
    if deflate and len(payload) >= COMPRESS_FROM_BYTES:
        return ws_frame(opcode, _deflate(payload), compressed=True)
    return ws_frame(opcode, payload)


def _deflate(payload: bytes) -> bytes:
    """One message compressed on its own (no context takeover, RFC 7692 §7.2.1)."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -WINDOW_BITS)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]  # without the 00 00 ff ff that every sync flush ends with


def encode_packets(packets: tuple[eio_packet.Packet, ...]) -> Encoded:
    return Encoded(packets, b"".join(_frame(packet) for packet in packets))


def encode_socketio(packet: sio_packet.Packet) -> Encoded:
    """A Socket.IO packet (and its binary attachments) as Engine.IO messages."""
    parts = packet.encode()
    if not isinstance(parts, list):
        parts = [parts]
    return encode_packets(tuple(eio_packet.Packet(eio_packet.MESSAGE, part) for part in parts))


def encode_event(namespace: str, name: str, data: Any, ack_id: int | None = None) -> Encoded:
    """``emit(name, data)`` on ``namespace``; ``ack_id`` when the sender waits for an answer."""
    arguments = [name] if data is None else [name, data]
    try:
        return _encode_json(_EVENT, namespace, ack_id, orjson.dumps(arguments))
    except TypeError:
        # Bytes in it (orjson writes none): a binary event, its attachments apart.
        return encode_socketio(
            sio_packet.Packet(sio_packet.EVENT, data=arguments, namespace=namespace, id=ack_id)
        )


def encode_ack(namespace: str, ack_id: int, arguments: list[Any]) -> Encoded:
    """The answer to a client's event ``ack_id``: JSON only (commands answer no bytes)."""
    return _encode_json(_ACK, namespace, ack_id, orjson.dumps(arguments))


# python-socketio's Packet.encode writes these the same way, but walks every payload
# for bytes first, and its JSON is orjson here too (realtime/server.py).
_EVENT = str(sio_packet.EVENT)
_ACK = str(sio_packet.ACK)


def _encode_json(kind: str, namespace: str, ack_id: int | None, body: bytes) -> Encoded:
    head = kind if namespace == "/" else f"{kind}{namespace},"
    if ack_id is not None:
        head += str(ack_id)
    message = head.encode() + body
    return Encoded(None, ws_frame(TEXT, b"4" + message), message=message)


PING = encode_packets((eio_packet.Packet(eio_packet.PING),))
NOOP = encode_packets((eio_packet.Packet(eio_packet.NOOP),))
CLOSE_PACKET = encode_packets((eio_packet.Packet(eio_packet.CLOSE),))
