"""One connection's way out: written through while the peer keeps up, a bounded backlog
while it does not, closed when it falls too far behind.

A websocket connection is written to while its transport takes data (below its
high-water mark) and nothing is waiting: what one turn of the event loop sends it is
written at the end of that turn, in one system call (``Flusher``), as Node's
engine.io does while a write is in flight. A long-polling connection always queues
until its next GET. What waits is bounded in events and bytes. Waiting events of a
replaceable or mergeable class are superseded in place by newer ones with the same
key, so a late reader gets the latest state rather than its history; the rest
(control, chat) is kept in order. Past a bound, the backlog is dropped and the
connection is closed (``slow_consumer``): it catches up from the log when it returns.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from engineio import packet as eio_packet

from app.events import EventClass
from realtime.delivery.encoding import Encoded
from realtime.delivery.events import Event
from realtime.delivery.merging import merge
from realtime.delivery.metrics import DeliveryMetrics

log = logging.getLogger(__name__)


# What one turn of the event loop may give a connection before it is written at once
# (asyncio's default high-water mark): corked data is not bounded by ``Limits``.
CORK_BYTES = 64 * 1024


class Policy(enum.Enum):
    KEEP = "keep"  # never dropped, never reordered
    REPLACE = "replace"  # the newest with the same key replaces the one waiting
    MERGE = "merge"  # merged with the one waiting (merging.merge)


POLICY = {
    EventClass.CONTROL: Policy.KEEP,
    EventClass.CHAT: Policy.KEEP,
    EventClass.PRESENCE: Policy.REPLACE,
    EventClass.TYPING: Policy.REPLACE,
    EventClass.AI_CHUNK: Policy.MERGE,
    EventClass.DOCUMENT: Policy.MERGE,
    EventClass.AWARENESS: Policy.MERGE,
}


@dataclass(frozen=True, slots=True)
class Limits:
    """How far behind a connection may fall before it is closed."""

    # Bytes waiting beyond the next event to be written (one event larger than this
    # still goes through when it is the only one waiting).
    max_bytes: int
    max_events: int


def _nowhere(frames: bytes) -> None:
    raise RuntimeError("no transport to write to")


class _Waiting:
    __slots__ = ("encoded", "event", "live", "namespace", "slot")

    def __init__(
        self,
        encoded: Encoded,
        event: Event | None,
        namespace: str,
        slot: tuple[str, EventClass, Hashable] | None,
    ) -> None:
        self.encoded = encoded
        self.event = event
        self.namespace = namespace
        self.slot = slot
        self.live = True  # False once superseded (skipped, and removed in passing)

    @property
    def kind(self) -> EventClass:
        return self.event.kind if self.event is not None else EventClass.CONTROL


class Flusher:
    """Ends each turn of the event loop by writing what it gave each outbox.

    A room's events reach a connection one write call each; under load many come in
    one turn. Written together they cost one system call (and wake the client once)
    instead of one each; at low rates the cost is one callback per turn.
    """

    __slots__ = ("_dirty",)

    def __init__(self) -> None:
        self._dirty: list[Outbox] = []

    def add(self, outbox: Outbox) -> None:
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self.flush)
        self._dirty.append(outbox)

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for outbox in dirty:
            try:
                outbox.uncork()
            except Exception:  # one broken transport must not stall the others
                log.exception("could not write to a connection")


class Outbox:
    """What one Engine.IO connection has yet to receive."""

    __slots__ = (
        "_bytes",
        "_corked",
        "_corked_bytes",
        "_dead",
        "_drained",
        "_flusher",
        "_keyed",
        "_on_overflow",
        "_paused",
        "_queue",
        "_transport_write",
        "_waiter",
        "attached",
        "closed",
        "deflate",
        "direct",
        "limits",
        "metrics",
    )

    def __init__(
        self,
        limits: Limits,
        metrics: DeliveryMetrics,
        flusher: Flusher,
        on_overflow: Callable[[], None],
    ) -> None:
        self.limits = limits
        self.metrics = metrics
        self._flusher = flusher
        self._on_overflow = on_overflow
        # True when a push can be written (``write``) rather than queued: a websocket
        # attached and not paused, nothing waiting, not closed. Fan-out loops test it.
        self.direct = False
        # The websocket transport's write (``attached``); nowhere while on long-polling.
        self._transport_write: Callable[[bytes], object] = _nowhere
        self.attached = False
        self.deflate = False  # the websocket negotiated permessage-deflate
        self._corked: list[bytes] | None = None  # written this turn, sent at its end
        self._corked_bytes = 0
        self.closed = False
        self._paused = False
        self._queue: deque[_Waiting] = deque()
        self._keyed: dict[tuple[str, EventClass, Hashable], _Waiting] = {}
        self._dead = 0  # superseded entries still in the queue
        self._bytes = 0
        self._waiter: asyncio.Future[None] | None = None  # a long-polling GET
        self._drained: asyncio.Future[None] | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes waiting here (not counting what the transport itself holds)."""
        return self._bytes

    @property
    def waiting(self) -> int:
        return len(self._queue) - self._dead

    # --- pushing ----------------------------------------------------------------------

    def push(self, encoded: Encoded, event: Event | None = None, namespace: str = "/") -> None:
        """Send ``encoded`` (``event``'s encoding for ``namespace``, or a bare packet)."""
        if self.direct:
            self.write(encoded.deflated() if self.deflate else encoded.frames)
        elif not self.closed:
            self.enqueue(encoded, event, namespace)

    def write(self, frames: bytes) -> None:
        """The fast path of ``push`` (only while ``direct``): out at the end of this turn,
        or now once the turn has given this connection ``CORK_BYTES`` (the transport then
        says whether it is full, and what follows is queued and bounded)."""
        if self._corked is None:
            self._corked = [frames]
            self._corked_bytes = len(frames)
            self._flusher.add(self)
        else:
            self._corked.append(frames)
            self._corked_bytes += len(frames)
        if self._corked_bytes > CORK_BYTES:
            self.uncork()

    def uncork(self) -> None:
        # Cleared first: a failed write must not leave this outbox corked for good (the
        # Flusher would never be asked again, and every later write would pile up here).
        corked, self._corked = self._corked, None
        if corked and self.attached:
            self._transport_write(corked[0] if len(corked) == 1 else b"".join(corked))

    def enqueue(self, encoded: Encoded, event: Event | None, namespace: str) -> None:
        """The slow path of ``push``: the connection cannot take it now."""
        policy = POLICY[event.kind] if event is not None else Policy.KEEP
        slot = None
        if policy is not Policy.KEEP and event is not None and event.key is not None:
            slot = (namespace, event.kind, event.key)
            older = self._keyed.get(slot)
            if older is not None:
                # The newest state goes to the back, where it belongs among the
                # room's other events; the one it supersedes is skipped.
                if policy is Policy.MERGE:
                    assert older.event is not None
                    event = merge(older.event, event)
                    encoded = event.encoded(namespace)
                    self.metrics.merged(event.kind)
                else:
                    self.metrics.replaced(event.kind)
                self._drop(older)
        waiting = _Waiting(encoded, event, namespace, slot)
        if slot is not None:
            self._keyed[slot] = waiting
        self._queue.append(waiting)
        self._bytes += encoded.size
        if self._check_bounds() and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _drop(self, waiting: _Waiting) -> None:
        waiting.live = False
        self._bytes -= waiting.encoded.size
        self._dead += 1
        self._trim()
        if self._dead > 32 and self._dead * 2 > len(self._queue):  # amortized O(1) a drop
            self._queue = deque(item for item in self._queue if item.live)
            self._dead = 0

    def _trim(self) -> None:
        """Keep the head of the queue live (bounds and emptiness read it)."""
        queue = self._queue
        while queue and not queue[0].live:
            queue.popleft()
            self._dead -= 1

    def _check_bounds(self) -> bool:
        queue, limits = self._queue, self.limits
        if self.waiting <= limits.max_events and (
            self._bytes - queue[0].encoded.size <= limits.max_bytes
        ):
            return True
        self._overflow()
        return False

    def _overflow(self) -> None:
        for waiting in self._queue:
            if waiting.live:
                self.metrics.dropped(waiting.kind)
        self.metrics.slow_consumer()
        self._clear()
        self.closed = True
        self.direct = False
        self._on_overflow()

    def _clear(self) -> None:
        self._queue.clear()
        self._keyed.clear()
        self._bytes = 0
        self._dead = 0

    def last_words(self, items: list[Encoded]) -> None:
        """Send ``items`` past the bounds and the pause (a closing connection's notice
        and close packet): a websocket gets them now, a long-polling one on its next GET."""
        if self.attached:
            self.uncork()
            self._transport_write(b"".join(self._frames(item) for item in items))
            return
        for item in items:
            self._queue.append(_Waiting(item, None, "/", None))
            self._bytes += item.size
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- websocket --------------------------------------------------------------------

    def attach(self, write: Callable[[bytes], object], *, deflate: bool = False) -> None:
        """From now on write through ``write`` (a websocket transport's; ``deflate``: it
        negotiated permessage-deflate); send what waits."""
        self._transport_write = write
        self.attached = True
        self.deflate = deflate
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._flush()

    def pause(self) -> None:
        """The transport is above its high-water mark: queue from now on."""
        self._paused = True
        self.direct = False

    def resume(self) -> None:
        """The transport drained below its low-water mark."""
        self._paused = False
        self._flush()

    def detach(self) -> None:
        """The transport is gone: nothing more can be written."""
        self._transport_write = _nowhere
        self._corked = None
        self.attached = False
        self.direct = False
        self.closed = True
        self._clear()
        self._wake_drained()

    def _flush(self) -> None:
        queue = self._queue
        write = self._transport_write
        if not self.attached:
            return
        # What was written through this turn came before anything that waits.
        self.uncork()
        # A write can pause the outbox (the transport passed its high-water mark).
        while queue and not self._paused:
            waiting = queue.popleft()
            if not waiting.live:
                self._dead -= 1
                continue
            if waiting.slot is not None:
                del self._keyed[waiting.slot]
            self._bytes -= waiting.encoded.size
            write(self._frames(waiting.encoded))
        self._trim()
        self.direct = not queue and not self._paused and not self.closed
        if not queue:
            self._wake_drained()

    def _frames(self, encoded: Encoded) -> bytes:
        return encoded.deflated() if self.deflate else encoded.frames

    # --- long-polling -----------------------------------------------------------------

    async def take(self, timeout: float) -> list[eio_packet.Packet]:  # noqa: ASYNC109
        """Everything waiting, for a long-polling GET: at once, or as soon as something
        comes within ``timeout`` (``TimeoutError`` otherwise); ``[]`` once closed."""
        if not self._queue:
            if self.closed or self.attached:
                return []
            if self._waiter is not None and not self._waiter.done():
                raise RuntimeError("another long-polling request is already waiting")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            finally:
                self._waiter = None
        packets = [
            packet for waiting in self._queue if waiting.live for packet in waiting.encoded.packets
        ]
        self._clear()
        self._wake_drained()
        return packets

    # --- closing ----------------------------------------------------------------------

    def close(self) -> None:
        """Take nothing more. What waits still goes out; a long-polling GET that waits
        for more is answered now (with nothing), so that the client need not time out."""
        self.closed = True
        self.direct = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def drained(self) -> None:
        """Until nothing waits here (handed to the transport or to a GET)."""
        if not self._queue:
            return
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drained)

    def _wake_drained(self) -> None:
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)
            self._drained = None
