"""Support for tests/test_fuzz_socket.py: a raw Socket.IO connection that sends any
frame and files every packet it receives, and Hypothesis driven from a worker thread
while the examples run on the test's event loop."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import reprlib
import string
from collections import defaultdict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from socket import IPPROTO_TCP, TCP_NODELAY
from typing import Any, TypeVar

import pytest

from tests.raw_socketio import Closed, RawClient

T = TypeVar("T")
EXAMPLE_TIMEOUT = 30.0
ACK_TIMEOUT = 10.0


# --- a raw connection: any frame out, every packet in ------------------------------------


@dataclass(frozen=True)
class RawJSON:
    """JSON text sent as it is: what the stdlib's encoder would not write (nested past
    its recursion limit, ``1e999``, ``-0``)."""

    text: str


def prepare(data: Any, attachments: list[bytes], raw: list[str]) -> Any:
    """``data`` with each ``bytes`` replaced by an attachment placeholder and each
    ``RawJSON`` by a marker for its text."""
    if isinstance(data, bytes):
        attachments.append(data)
        return {"_placeholder": True, "num": len(attachments) - 1}
    if isinstance(data, RawJSON):
        raw.append(data.text)
        return f"\x00raw{len(raw) - 1}\x00"
    if isinstance(data, list):
        return [prepare(item, attachments, raw) for item in data]
    if isinstance(data, dict):
        return {key: prepare(value, attachments, raw) for key, value in data.items()}
    return data


def to_json(data: Any, attachments: list[bytes]) -> str:
    """``data`` as JSON text, ``RawJSON`` as its text and ``bytes`` as placeholders
    (appended to ``attachments``). The stdlib's ``ensure_ascii`` sends a lone
    surrogate as its escape."""
    raw: list[str] = []
    text = json.dumps(prepare(data, attachments, raw), separators=(",", ":"))
    for number, value in enumerate(raw):
        text = text.replace(json.dumps(f"\x00raw{number}\x00"), value, 1)
    return text


def reconstruct(data: Any, attachments: list[bytes]) -> Any:
    if isinstance(data, list):
        return [reconstruct(item, attachments) for item in data]
    if isinstance(data, dict):
        if data.get("_placeholder") is True and "num" in data:
            return attachments[data["num"]]
        return {key: reconstruct(value, attachments) for key, value in data.items()}
    return data


@dataclass
class Packet:
    kind: str  # "2" event, "3" ack (binary ones included), "0", "1", "4"
    namespace: str
    id: int | None
    data: Any


def parse_packet(text: str) -> tuple[Packet, int]:
    """A Socket.IO packet (without its Engine.IO ``4``) and its attachment count."""
    kind, rest = text[:1], text[1:]
    attachments = 0
    if kind in ("5", "6"):
        count, rest = rest.split("-", 1)
        attachments = int(count)
    namespace = "/"
    if rest.startswith("/"):
        namespace, _, rest = rest.partition(",")
    digits = len(rest) - len(rest.lstrip(string.digits))
    ack_id = int(rest[:digits]) if digits else None
    data = json.loads(rest[digits:]) if rest[digits:] else None
    return Packet({"5": "2", "6": "3"}.get(kind, kind), namespace, ack_id, data), attachments


class Wire:
    """One Engine.IO connection (a ``RawClient``) and its namespaces; a reader task
    files what arrives: events by namespace, acks by id, and whether it closed."""

    def __init__(self, raw: RawClient) -> None:
        self.raw = raw
        self.events: dict[str, list[tuple[Any, list[Any]]]] = defaultdict(list)
        self.others: list[Packet] = []  # disconnects, connect errors
        self.closed: Closed | None = None
        self._acks: dict[tuple[str, int], asyncio.Future[list[Any]]] = {}
        self._next_id = 0
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, port: int | None, token: str, *namespaces: str) -> Wire:
        assert port is not None
        async with asyncio.timeout(10):
            raw = await RawClient.connect(port, token, receive_buffer=1 << 20)
            # A binary event is two frames: with Nagle's algorithm the second waits for
            # the server's delayed ACK of the first (40 ms).
            raw.writer.get_extra_info("socket").setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
            for namespace in namespaces:
                await raw.connect_namespace(namespace, token)
        return cls(raw)

    async def send_packet(self, text: str, attachments: Sequence[bytes] = ()) -> None:
        await self.raw.send_text(text)
        for attachment in attachments:
            await self.raw.send_binary(attachment)

    async def send(self, namespace: str, name: Any, args: list[Any], *, ack: bool) -> int | None:
        """Emit ``[name, *args]`` (``to_json``: bytes anywhere go as attachments)."""
        attachments: list[bytes] = []
        text = to_json([name, *args], attachments)
        ack_id = None
        if ack:
            self._next_id += 1
            ack_id = self._next_id
            self._acks[(namespace, ack_id)] = asyncio.get_running_loop().create_future()
        kind = f"5{len(attachments)}-" if attachments else "2"
        prefix = "" if namespace == "/" else f"{namespace},"
        number = "" if ack_id is None else str(ack_id)
        await self.send_packet(f"4{kind}{prefix}{number}{text}", attachments)
        return ack_id

    async def ack(self, namespace: str, ack_id: int | None) -> list[Any]:
        assert ack_id is not None
        try:
            async with asyncio.timeout(ACK_TIMEOUT):
                return await self._acks[(namespace, ack_id)]
        finally:
            del self._acks[(namespace, ack_id)]

    async def call(self, namespace: str, name: str, *args: Any) -> list[Any]:
        return await self.ack(namespace, await self.send(namespace, name, list(args), ack=True))

    def errors(self, namespace: str, since: int = 0) -> list[dict[str, Any]]:
        return [args[0] for name, args in self.events[namespace][since:] if name == "error"]

    async def _read(self) -> None:
        waiting: tuple[Packet, int, list[bytes]] | None = None
        while True:
            message = await self.raw.receive()
            if isinstance(message, Closed):
                self.closed = message
                for future in self._acks.values():
                    if not future.done():
                        future.set_exception(ConnectionError(f"closed: {message}"))
                return
            if isinstance(message, bytes):
                assert waiting is not None, "an attachment without its packet"
                packet, count, attachments = waiting
                attachments.append(message)
                if len(attachments) == count:
                    packet.data = reconstruct(packet.data, attachments)
                    waiting = None
                    self._file(packet)
            elif message.startswith("4"):  # (else an Engine.IO noop)
                packet, count = parse_packet(message[1:])
                if count:
                    waiting = (packet, count, [])
                else:
                    self._file(packet)

    def _file(self, packet: Packet) -> None:
        if packet.kind == "2":
            name, *args = packet.data
            self.events[packet.namespace].append((name, args))
        elif packet.kind == "3":
            future = self._acks.get((packet.namespace, packet.id or 0))
            if future is not None and not future.done():
                future.set_result(packet.data)
        else:
            self.others.append(packet)

    def assert_open(self) -> None:
        assert self.closed is None, self.closed
        assert self.others == [], self.others

    async def close(self) -> None:
        self._reader.cancel()
        await self.raw.close()


# --- Hypothesis in a worker thread, the examples on the loop -----------------------------


class Driver:
    """Runs an example's coroutine on the test's loop from Hypothesis' thread, and
    reads what the server logged."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.loop = asyncio.get_running_loop()
        self.caplog = caplog

    def __call__(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(EXAMPLE_TIMEOUT)
        finally:
            future.cancel()

    def mark(self) -> int:
        return len(self.caplog.records)

    def errors_logged(self, since: int = 0) -> list[str]:
        return [
            f"{record.name}: {record.getMessage()} {record.exc_info[1] if record.exc_info else ''}"
            for record in self.caplog.records[since:]
            if record.levelno >= logging.ERROR
        ]

    async def run(self, *fuzzes: Callable[[], None]) -> None:
        for fuzz in fuzzes:
            await asyncio.to_thread(fuzz)
        gc.collect()  # a task's exception nobody retrieved is logged when it is freed
        await asyncio.sleep(0)
        assert self.errors_logged() == []


# Examples are shown shortened (a 200,000-character string, a 20,000-item list).
SHORT = reprlib.Repr()
SHORT.maxlevel, SHORT.maxstring, SHORT.maxother = 4, 60, 60


class Shown:
    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={SHORT.repr(value)}" for key, value in vars(self).items())
        return f"{type(self).__name__}({fields})"
