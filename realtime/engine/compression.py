"""permessage-deflate (RFC 7692) for websocket connections, when ``WEBSOCKET_COMPRESSION``
turns it on (it is off by default).

It is negotiated with no context takeover in either direction: each message is
compressed on its own. A broadcast is then compressed once, and the same bytes go to
every recipient that negotiated it (``Encoded.deflated``, delivery/encoding.py); and no
connection keeps a zlib stream between messages (with context takeover each keeps a
compressor and a decompressor with their windows, which is what made
python-socketio's connections cost 133 KiB when clients offered compression).
"""

from __future__ import annotations

import zlib

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol

from realtime.delivery.encoding import WINDOW_BITS


class BoundedDeflate(PerMessageDeflate):
    """wsproto's extension, with what one message may inflate to bounded: without it a
    frame of a megabyte of zeros inflates to a gigabyte before any size check runs."""

    def __init__(self, max_message_bytes: int) -> None:
        super().__init__(client_no_context_takeover=True, server_no_context_takeover=True)
        self.max_message_bytes = max_message_bytes
        self._inflated = 0

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        room = self.max_message_bytes - self._inflated
        if room <= 0:
            return CloseReason.MESSAGE_TOO_BIG
        try:
            inflated = self._decompressor.decompress(bytes(data), room)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if self._decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        self._inflated += len(inflated)
        return inflated

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if fin:
            self._inflated = 0
        return super().frame_inbound_complete(proto, fin)


def negotiate(offers: str, max_message_bytes: int) -> tuple[BoundedDeflate, str] | None:
    """The extension and the ``Sec-WebSocket-Extensions`` answer for a client's
    ``offers``, or None when it offers nothing we accept."""
    for offer in offers.split(","):
        name, _, parameters = offer.partition(";")
        if name.strip().lower() != "permessage-deflate":
            continue
        values = [p.strip().partition("=") for p in parameters.split(";") if p.strip()]
        names = [key.strip().lower() for key, _, _ in values]
        if len(set(names)) != len(names):
            continue  # a parameter given twice: the offer is declined (RFC 7692 §7)
        # A client that wants a smaller window than everyone's gets no compression:
        # a broadcast is compressed once, with one window.
        window = dict((key.strip().lower(), value.strip()) for key, _, value in values)
        if window.get("server_max_window_bits", str(WINDOW_BITS)) != str(WINDOW_BITS):
            continue
        extension = BoundedDeflate(max_message_bytes)
        try:
            answer = extension.accept(offer)
        except ValueError:  # a malformed value (wsproto parses them with int())
            continue
        if isinstance(answer, str):
            return extension, f"permessage-deflate; {answer}"
    return None
