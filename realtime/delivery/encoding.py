"""Encoding once: what a Socket.IO event becomes on the wire, computed once per event.

An event is a Socket.IO packet (text, plus one attachment per binary payload), each
part an Engine.IO MESSAGE packet, each of those a WebSocket frame. A broadcast builds
all of it once: long-polling connections take the Engine.IO packets, websocket
connections the frames, concatenated, in one write per recipient.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from engineio import packet as eio_packet
from socketio import packet as sio_packet

TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
_FIN = 0x80
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket frame (what a server sends, RFC 6455 §5.2)."""
    first = _FIN | opcode
    length = len(payload)
    if length < 126:
        return bytes((first, length)) + payload
    if length < 1 << 16:
        return _LEN16.pack(first, 126, length) + payload
    return _LEN64.pack(first, 127, length) + payload


@dataclass(frozen=True, slots=True)
class Encoded:
    """One event or packet ready for any transport."""

    packets: tuple[eio_packet.Packet, ...]  # for long-polling responses
    frames: bytes  # for websocket connections: every part's frame, back to back

    @property
    def size(self) -> int:
        return len(self.frames)


def encode_packets(packets: tuple[eio_packet.Packet, ...]) -> Encoded:
    frames = []
    for packet in packets:
        data = packet.encode()
        if isinstance(data, bytes):
            frames.append(ws_frame(BINARY, data))
        else:
            frames.append(ws_frame(TEXT, data.encode()))
    return Encoded(packets, b"".join(frames))


def encode_socketio(packet: sio_packet.Packet) -> Encoded:
    """A Socket.IO packet (and its binary attachments) as Engine.IO messages."""
    parts = packet.encode()
    if not isinstance(parts, list):
        parts = [parts]
    return encode_packets(tuple(eio_packet.Packet(eio_packet.MESSAGE, part) for part in parts))


def encode_event(namespace: str, name: str, data: Any, ack_id: int | None = None) -> Encoded:
    """``emit(name, data)`` on ``namespace``; ``ack_id`` when the sender waits for an answer."""
    arguments = [name] if data is None else [name, data]
    return encode_socketio(
        sio_packet.Packet(sio_packet.EVENT, data=arguments, namespace=namespace, id=ack_id)
    )


PING = encode_packets((eio_packet.Packet(eio_packet.PING),))
NOOP = encode_packets((eio_packet.Packet(eio_packet.NOOP),))
CLOSE_PACKET = encode_packets((eio_packet.Packet(eio_packet.CLOSE),))
