"""The Socket.IO packets a client may send: python-socketio's, checked as socket.io's
own parser checks them, with every failure to decode one raised as ``UndecodablePacket``.

python-socketio lets such failures escape from its message handler (python-engineio
logs each at ERROR with a traceback), and a binary packet whose attachments failed to
decode is kept: every later message of the connection was taken for one more of its
attachments, so the connection answered nothing again. ``RoomServer`` drops an
undecodable packet and goes on.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from socketio import packet

KINDS = frozenset(
    {packet.CONNECT, packet.DISCONNECT, packet.EVENT, packet.ACK, packet.BINARY_EVENT}
    | {packet.BINARY_ACK}
)
_NAME_TYPES = (str, int, float)  # what may name an event (a bool may not)
# A plain text event packet up to its data: "2", a namespace and its comma, an ack id
# (ASCII digits, as many as JavaScript's safe integers have: a longer id goes to the
# packet class, which takes up to 100), then the data's "[".
_PLAIN_EVENT = re.compile(r"2(?:(/[^,?]*),)?([0-9]{0,16})(?=\[)")


class UndecodablePacket(ValueError):
    """Empty or not Socket.IO, JSON the decoder gives up on (nested past the
    interpreter's recursion limit, a number of thousands of digits), an attachment
    placeholder that names no attachment, or an event that is not a list headed by its
    name."""


def plain_event(encoded: str) -> tuple[str | None, int | None, list[Any]] | None:
    """A plain text event packet (``2``, a namespace, an ack id, a JSON list headed by
    the event's name) decoded as ``CheckedPacket`` would; None for every other packet,
    which the packet class decodes (or refuses). Nearly every packet a client sends is
    of this shape, and the general decoder took 2.5 times as long.
    """
    head = _PLAIN_EVENT.match(encoded)
    if head is None:
        return None  # attachments ("-"), a "?" in the namespace, no data, not an event
    try:
        data = orjson.loads(encoded[head.end() :])
    except orjson.JSONDecodeError:
        return None  # the stdlib may take it (realtime.server._OrjsonModule)
    name = data[0] if data else None  # a list: it began with "["
    if not isinstance(name, _NAME_TYPES) or isinstance(name, bool):
        return None
    namespace, digits = head.group(1, 2)
    return namespace, int(digits) if digits else None, data


class CheckedPacket(packet.Packet):  # type: ignore[misc]
    def __init__(self, *args: Any, encoded_packet: Any = None, **kwargs: Any) -> None:
        # python-socketio takes an empty message for an event without data.
        if encoded_packet is not None and not encoded_packet:
            raise UndecodablePacket("an empty message")
        super().__init__(*args, encoded_packet=encoded_packet, **kwargs)

    def decode(self, encoded_packet: Any) -> int:
        try:
            count: int = super().decode(encoded_packet)
        except (ValueError, TypeError, RecursionError) as exc:
            raise UndecodablePacket(f"{type(exc).__name__}: {exc}") from exc
        if self.packet_type not in KINDS:
            raise UndecodablePacket(f"no packet type {self.packet_type!r} from a client")
        if not count:
            self._check_data()
        return count

    def add_attachment(self, attachment: Any) -> bool:
        try:
            complete: bool = super().add_attachment(attachment)
        except (ValueError, TypeError, LookupError, RecursionError) as exc:
            raise UndecodablePacket(f"{type(exc).__name__}: {exc}") from exc
        if complete:
            self._check_data()
        return complete

    def _check_data(self) -> None:
        # socket.io-parser's isPayloadValid; a name of "connect" or "disconnect" stays
        # an (unknown) event here: the namespaces answer it.
        data = self.data
        if self.packet_type in (packet.EVENT, packet.BINARY_EVENT):
            name = data[0] if isinstance(data, list) and data else None
            if not isinstance(name, _NAME_TYPES) or isinstance(name, bool):
                raise UndecodablePacket("an event is a list headed by its name")
        elif self.packet_type in (packet.ACK, packet.BINARY_ACK) and not isinstance(data, list):
            raise UndecodablePacket("an ack is a list")
