"""The Socket.IO packets a client may send: python-socketio's, checked as socket.io's
own parser checks them, with every failure to decode one raised as ``UndecodablePacket``.

python-socketio lets such failures escape from its message handler (python-engineio
logs each at ERROR with a traceback), and a binary packet whose attachments failed to
decode is kept: every later message of the connection was taken for one more of its
attachments, so the connection answered nothing again. ``RoomServer`` drops an
undecodable packet and goes on.
"""

from __future__ import annotations

from typing import Any

from socketio import packet

KINDS = frozenset(
    {packet.CONNECT, packet.DISCONNECT, packet.EVENT, packet.ACK, packet.BINARY_EVENT}
    | {packet.BINARY_ACK}
)


class UndecodablePacket(ValueError):
    """Empty or not Socket.IO, JSON the decoder gives up on (nested past the
    interpreter's recursion limit, a number of thousands of digits), an attachment
    placeholder that names no attachment, or an event that is not a list headed by its
    name."""


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
            if not isinstance(name, str | int | float) or isinstance(name, bool):
                raise UndecodablePacket("an event is a list headed by its name")
        elif self.packet_type in (packet.ACK, packet.BINARY_ACK) and not isinstance(data, list):
            raise UndecodablePacket("an ack is a list")
