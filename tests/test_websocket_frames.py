"""Frames in: the simple frames read without wsproto, and the hand-over to wsproto.

A WebSocketConnection reads whole, masked, unfragmented text and binary frames itself
until a frame of another kind arrives; wsproto reads every byte from there on. These
tests feed it bytes as a TCP connection may deliver them (split anywhere, many frames
at once) and check what its listener gets and what it answers.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
from typing import Any

import pytest

from realtime.engine.websocket import WebSocketConnection


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    """A client's frame (RFC 6455 §5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text(value: str, **kwargs: Any) -> bytes:
    return frame(0x1, value.encode(), **kwargs)


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Listener:
    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.closing = False

    def on_message(self, data: str | bytes) -> None:
        self.messages.append(data)

    def on_closing(self, connection: WebSocketConnection) -> None:
        self.closing = True

    def on_closed(self, connection: WebSocketConnection) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


def opened(max_message_bytes: int = 1 << 20) -> tuple[WebSocketConnection, Transport, Listener]:
    connection = WebSocketConnection(max_message_bytes)
    transport, listener = Transport(), Listener()
    connection.connection_made(transport)
    connection.listen(listener)
    return connection, transport, listener


def close_code(transport: Transport) -> int:
    """The code of the close frame the server wrote last."""
    at = transport.written.rindex(b"\x88")
    return int(struct.unpack("!H", transport.written[at + 2 : at + 4])[0])


MESSAGES: list[str | bytes] = [
    "",
    "2",
    '42["chat:send",{"text":"héllo ✓"}]',
    "x" * 125,
    "y" * 126,
    b"\x00\x01\x02" * 100,
    "z" * 65_535,
    b"",
]


def encoded(messages: list[str | bytes]) -> bytes:
    return b"".join(text(m) if isinstance(m, str) else frame(0x2, m) for m in messages)


@pytest.mark.parametrize("seed", range(20))
async def test_simple_frames_split_anywhere_arrive_whole_and_in_order(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection, transport, listener = opened()

    def wsproto_reads(data: bytes) -> None:
        raise AssertionError(f"wsproto was given {data[:20]!r}")

    monkeypatch.setattr(connection._ws, "receive_data", wsproto_reads)
    data = encoded(MESSAGES)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), 40)) if seed else list(range(1, 200))
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        connection.data_received(data[start:end])
    assert listener.messages == MESSAGES
    assert transport.written == b"" and not transport.closed


async def test_a_ping_hands_over_to_wsproto_which_reads_everything_after_it() -> None:
    connection, transport, listener = opened()
    before, after = encoded(["one", b"two"]), encoded(["three", "four"])
    fragmented = text("fi", fin=False) + frame(0x0, b"ve")
    connection.data_received(before + frame(0x9, b"ping!") + after[:3])
    connection.data_received(after[3:] + fragmented)
    assert listener.messages == ["one", b"two", "three", "four", "five"]
    assert transport.written == bytes([0x8A, 5]) + b"ping!"  # wsproto's pong


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(0x1, b"\xff\xfe not utf-8"), 1007),
        (text("unmasked", masked=False), 1002),
        (bytes([0xC1]) + text("rsv1 set")[1:], 1002),
        (frame(0x3, b"reserved opcode"), 1002),
        (text("x" * 200), 1009),  # past max_message_bytes
    ],
    # Named, not shown: the masks are random, and pytest-xdist's workers must collect
    # the same ids.
    ids=["not-utf-8", "unmasked", "rsv1", "reserved-opcode", "too-long"],
)
async def test_a_frame_it_does_not_read_is_refused_as_wsproto_refuses_it(
    bad: bytes, code: int
) -> None:
    connection, transport, listener = opened(max_message_bytes=100)
    connection.data_received(text("fine") + bad + text("never read"))
    assert listener.messages == ["fine"]
    assert listener.closing and transport.closed
    assert close_code(transport) == code


async def test_a_frame_of_64_kib_or_more_is_read_by_wsproto() -> None:
    connection, _, listener = opened()
    big = "b" * 70_000
    connection.data_received(text("small") + text(big) + text("after"))
    assert listener.messages == ["small", big, "after"]
