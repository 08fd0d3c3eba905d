"""A room event as bytes between nodes, and a room as a Redis channel (and an action
one node asks of the others, as JSON).

A message is the sending node's id, then a small JSON header (the event's name, class
and key, and whether the payload is binary), then the payload: the bytes themselves
for a binary one (Yjs updates and awareness stay binary, not base64), JSON otherwise.
The key comes back as the same value it was (a ``UUID`` as a ``UUID``, a tuple as a
tuple), so an event from another node supersedes a waiting local one with the same key
exactly as a local one would (realtime/delivery/outbox.py).

Nothing here is pickle: a message from Redis is data, never code.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Hashable
from typing import Any

import orjson

from app.events import EventClass
from realtime.delivery import Event
from realtime.delivery.rooms import Room

NODE_ID_BYTES = 8
_HEADER = struct.Struct("!H")  # the header's length


class BadMessage(ValueError):
    """A message that is not one of ours (another version, another program)."""


def channel_of(prefix: str, room: Room) -> bytes:
    """``<prefix>:doc:<uuid>`` for the room ``("doc", uuid)``."""
    parts = room if isinstance(room, tuple) else (room,)
    return ":".join((prefix, *(str(part) for part in parts))).encode()


def encode(node: bytes, event: Event) -> bytes:
    binary = isinstance(event.data, bytes | bytearray | memoryview)
    header = orjson.dumps([event.name, event.kind.value, _key_out(event.key), binary])
    body = bytes(event.data) if binary else orjson.dumps(event.data)
    return b"".join((node, _HEADER.pack(len(header)), header, body))


def decode(message: bytes, offset: int = NODE_ID_BYTES) -> Event:
    """The event of a message whose node id ends at ``offset``."""
    try:
        (length,) = _HEADER.unpack_from(message, offset)
        start = offset + _HEADER.size
        name, kind, key, binary = orjson.loads(message[start : start + length])
        body = message[start + length :]
        data = body if binary else orjson.loads(body)
        return Event(name, data, EventClass(kind), _key_in(key))
    except (struct.error, ValueError, TypeError) as exc:
        raise BadMessage(str(exc)) from exc


def encode_action(node: bytes, action: str, args: tuple[str | None, ...]) -> bytes:
    return node + orjson.dumps([action, *args])


def decode_action(message: bytes, offset: int = NODE_ID_BYTES) -> tuple[str, list[str | None]]:
    """An ``announce``d action and its arguments (strings or None)."""
    try:
        action, *args = orjson.loads(memoryview(message)[offset:])
    except (ValueError, TypeError) as exc:
        raise BadMessage(str(exc)) from exc
    if not isinstance(action, str) or not all(a is None or isinstance(a, str) for a in args):
        raise BadMessage(f"not an action: {action!r}")
    return action, args


def _key_out(key: Hashable) -> Any:
    if isinstance(key, uuid.UUID):
        return {"u": str(key)}
    if isinstance(key, tuple):
        return [_key_out(part) for part in key]
    if key is None or isinstance(key, str | int | float):
        return key
    raise TypeError(f"an event key of type {type(key).__name__} cannot cross nodes")


def _key_in(value: Any) -> Hashable:
    if isinstance(value, dict):
        return uuid.UUID(value["u"])
    if isinstance(value, list):
        return tuple(_key_in(part) for part in value)
    key: Hashable = value
    return key
