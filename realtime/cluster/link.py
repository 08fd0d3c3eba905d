"""``RedisLink``: room events between nodes over Redis pub/sub, one channel per room.

Publishing: ``Delivery.to_room`` hands each room event here once; it is encoded once
(codec.py) and queued, and one task writes what queued since its last round trip as
one pipelined batch of ``PUBLISH``es on one connection, so a room's events leave this
node in the order they were handed over. Redis sends each only to the nodes
subscribed to the room's channel.

Hearing: one connection holds this node's subscriptions, one channel per room that has
members here (``watch``/``unwatch``, told by ``Delivery``), as the sharded socket.io
Redis adapter's "dynamic" mode and Hocuspocus' Redis extension do: a node with nobody
in a room is not sent its events at all. Each message is decoded and handed to
``Delivery.to_local_room``, which encodes it once for this node's members; a node's
own messages come back to it and are skipped by their node id.

Redis going away: local delivery never waits for Redis (handing over is a list
append). The link notices the lost connection, logs once, counts the outage
(``cluster_outages_total``), drops what it cannot send (``cluster_dropped_total``) and
reconnects with a backoff capped at ``max_backoff`` (1 s), so it resumes well within
2 s of Redis coming back. Events published while it was down are lost to the other
nodes: ``on_resumed`` is told which rooms were watched meanwhile, and resync.py brings
their members (here and on the other nodes) up to date. All redis-py errors are
caught in this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from realtime.cluster import codec
from realtime.cluster.target import RedisTarget
from realtime.delivery import Event
from realtime.delivery.rooms import Room

log = logging.getLogger(__name__)

Deliver = Callable[[Room, Event], object]
Resumed = Callable[[list[Room]], None]
Act = Callable[[str, list[str | None]], None]
Handler = Callable[[list[str | None]], None]

# Events waiting for the publisher at most (a hung Redis): past it they are dropped.
MAX_OUTGOING = 10_000
# Channels per SUBSCRIBE when (re)subscribing a node's rooms at once.
SUBSCRIBE_CHUNK = 1_000
# With no traffic this long the subscription connection is pinged; unanswered for as
# long again, Redis is taken as gone (a hung server closes no socket).
HEALTH_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ClusterMetrics:
    up: Gauge
    outages: Counter
    published: Counter
    received: Counter
    dropped: Counter
    subscriptions: Gauge


class RedisLink:
    """This node's link to the others through Redis (``Relay`` of realtime/delivery)."""

    def __init__(
        self,
        target: RedisTarget,
        *,
        prefix: str,
        metrics: ClusterMetrics,
        min_backoff: float = 0.05,
        max_backoff: float = 1.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self._pool = target.pool(
            socket_connect_timeout=connect_timeout, socket_timeout=HEALTH_SECONDS
        )
        self._prefix = prefix
        self._metrics = metrics
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self.node = os.urandom(codec.NODE_ID_BYTES)
        self._deliver: Deliver = lambda room, event: None
        self._act: Act = lambda action, args: None
        self._handlers: dict[str, Handler] = {}
        self._control = f"{prefix}:control".encode()
        self._on_resumed: Resumed = lambda rooms: None
        # Publishing.
        self._outgoing: list[tuple[bytes | str | int, ...]] = []  # commands, in order
        self._wake_publisher = asyncio.Event()
        self._publisher: AbstractConnection | None = None
        self._publisher_generation = 0
        self._publisher_failed = False
        self._idle = asyncio.Event()  # nothing queued or in flight
        self._idle.set()
        # Hearing: the rooms wanted (by channel), what the connection has subscribed.
        self._rooms: dict[bytes, Room] = {}
        self._channels: dict[Room, bytes] = {}
        self._subscribed: set[bytes] = set()
        # Subscriptions Redis confirmed on this connection (and still wanted), the
        # SUBSCRIBEs sent whose answer has not come, and who waits for an answer.
        self._confirmed: set[bytes] = set()
        self._unanswered: Tally[bytes] = Tally()
        self._confirming: dict[bytes, list[asyncio.Future[None]]] = {}
        self._changed: set[bytes] = set()
        self._wake_subscriber = asyncio.Event()
        self._subscriber: AbstractConnection | None = None
        self._heard = 0  # responses read on it, for _watch_health
        self.up = False
        self._generation = 0  # of the subscription connection: a new one after an outage
        self._down_since: float | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- Relay: called by Delivery, synchronously -------------------------------------

    def publish(self, room: Room, event: Event) -> None:
        if not self.up:
            self._metrics.dropped.inc()
            return
        try:
            message = codec.encode(self.node, event)
        except (TypeError, ValueError):  # a payload JSON cannot carry: a bug, not Redis
            log.exception("cluster: %r cannot cross nodes", event)
            return
        channel = self._channels.get(room) or codec.channel_of(self._prefix, room)
        self._queue(("PUBLISH", channel, message))

    def announce(self, action: str, *args: str | None) -> None:
        """Tell every other node to do ``action`` to its own connections (a removal, a
        deletion, a disabled user, a revoked session: rare, so on one channel that
        every node hears)."""
        if not self.up:
            self._metrics.dropped.inc()
            return
        self._queue(("PUBLISH", self._control, codec.encode_action(self.node, action, args)))

    def handle(self, action: str, handler: Handler) -> None:
        """The others' ``announce`` of ``action`` goes to ``handler`` (not to ``act``)."""
        self._handlers[action] = handler

    def command(self, *args: bytes | str | int) -> None:
        """Queue a command of another kind in the publishing pipeline (no answer is
        read): Redis runs it after what was queued before it and before what follows
        (a reply's text appended just before its chunk's ``PUBLISH``)."""
        if not self.up:
            self._metrics.dropped.inc()
            return
        self._queue(args)

    def _queue(self, command: tuple[bytes | str | int, ...]) -> None:
        if not self._outgoing:
            self._wake_publisher.set()
            self._idle.clear()
        elif len(self._outgoing) >= MAX_OUTGOING:
            self._metrics.dropped.inc()
            return
        self._outgoing.append(command)

    def watch(self, room: Room) -> None:
        channel = codec.channel_of(self._prefix, room)
        self._rooms[channel] = room
        self._channels[room] = channel
        if channel in self._subscribed and channel not in self._confirmed:
            # Unwatched and watched again before its UNSUBSCRIBE left: subscribed
            # again, so that a confirmation comes (subscribed() waits for one).
            self._subscribed.discard(channel)
        self._changed.add(channel)
        self._wake_subscriber.set()

    async def subscribed(self, room: Room) -> None:
        """Watch ``room`` and return once Redis has confirmed its subscription: every
        event published in the room from then on reaches this node, while
        :meth:`subscribed_now` holds (chat's catch-up is read after this)."""
        self.watch(room)
        channel = self._channels[room]
        if channel in self._confirmed:
            return
        future = asyncio.get_running_loop().create_future()
        self._confirming.setdefault(channel, []).append(future)
        try:
            await future
        finally:
            waiting = self._confirming.get(channel, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._confirming.pop(channel, None)

    def subscribed_now(self, room: Room) -> bool:
        """``room`` is watched and Redis confirmed it on the current connection."""
        channel = self._channels.get(room)
        return channel is not None and channel in self._confirmed

    def unwatch(self, room: Room) -> None:
        channel = self._channels.pop(room, None)
        if channel is not None:
            del self._rooms[channel]
            self._confirmed.discard(channel)
            self._changed.add(channel)
            self._wake_subscriber.set()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(
        self, deliver: Deliver, *, act: Act | None = None, on_resumed: Resumed | None = None
    ) -> None:
        """Start hearing (room events into ``deliver``, the others' ``announce``s into
        ``act``) and publishing; returns at once, Redis up or not. ``on_resumed`` is
        told the rooms that may have missed events after an outage."""
        self._deliver = deliver
        if act is not None:
            self._act = act
        if on_resumed is not None:
            self._on_resumed = on_resumed
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._hear(), name="cluster-hear"),
            loop.create_task(self._publish(), name="cluster-publish"),
        ]

    async def close(self) -> None:
        """Send what is queued (if Redis is there), then close both connections."""
        if self.up and self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for connection in (self._publisher, self._subscriber):
            if connection is not None:
                await connection.disconnect()
        await self._pool.disconnect()
        self._set_up(False)

    # --- publishing ---------------------------------------------------------------------

    async def _publish(self) -> None:
        while True:
            await self._wake_publisher.wait()
            self._wake_publisher.clear()
            batch, self._outgoing = self._outgoing, []
            if not self.up:
                self._metrics.dropped.inc(len(batch))
            else:
                await self._publish_batch(batch)
            if not self._outgoing:
                self._idle.set()

    async def _publish_batch(self, batch: list[tuple[bytes | str | int, ...]]) -> None:
        try:
            await self._send(batch)
        except (RedisError, OSError) as exc:
            # Redis gone (the subscription connection sees it too and owns the
            # link's state) or this connection alone: the next batch reconnects.
            self._metrics.dropped.inc(len(batch))
            if not self._publisher_failed and self.up:
                log.warning("cluster: publishing failed (%s: %s)", type(exc).__name__, exc)
            self._publisher_failed = True
            await self._drop_publisher()
        else:
            self._publisher_failed = False
            self._metrics.published.inc(sum(1 for command in batch if command[0] == "PUBLISH"))

    async def _drop_publisher(self) -> None:
        if self._publisher is not None:
            await self._publisher.disconnect(nowait=True)
            self._publisher = None

    async def _send(self, batch: list[tuple[bytes | str | int, ...]]) -> None:
        if self._publisher_generation != self._generation:
            await self._drop_publisher()  # from before an outage: a dead socket
        connection = self._publisher
        if connection is None:
            connection = self._publisher = self._connection()
            self._publisher_generation = self._generation
            await connection.connect()  # type: ignore[no-untyped-call]
            # PUBLISH answers how many nodes heard it, which nobody reads: without
            # replies a batch is one write, and this node reads nothing back.
            await connection.send_command("CLIENT", "REPLY", "OFF", check_health=False)
        packed = connection.pack_commands(batch)
        await connection.send_packed_command(packed, check_health=False)

    # --- hearing ------------------------------------------------------------------------

    async def _hear(self) -> None:
        backoff = self._min_backoff
        loop = asyncio.get_running_loop()
        while True:
            connection = self._connection()
            self._subscriber = connection
            session: list[asyncio.Task[None]] = []
            try:
                await connection.connect()  # type: ignore[no-untyped-call]
                await connection.send_command("CLIENT", "SETNAME", self._client_name())
                await connection.read_response()
                self._subscribed = set()
                self._confirmed = set()
                self._unanswered = Tally()
                self._changed = set()
                await connection.send_command("SUBSCRIBE", self._control, check_health=False)
                await self._subscribe(connection, list(self._rooms))
                self._generation += 1
                self._set_up(True)
                backoff = self._min_backoff
                session = [
                    loop.create_task(self._read(connection)),
                    loop.create_task(self._watch_health(connection)),
                    loop.create_task(self._follow(connection)),
                ]
                done, _ = await asyncio.wait(session[:2], return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # the reader's error, or the watchdog's verdict
            except (RedisError, OSError) as exc:
                self._lost(exc)
            finally:
                for task in session:
                    task.cancel()
                await asyncio.gather(*session, return_exceptions=True)
                await connection.disconnect(nowait=True)
                self._subscriber = None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _read(self, connection: AbstractConnection) -> None:
        while True:
            # No timeout per read (a timer per message): _watch_health has one.
            response = await connection.read_response(
                timeout=math.inf, push_request=True, disconnect_on_error=False
            )
            self._heard += 1
            if isinstance(response, list) and response[0] == b"message":
                self._receive(response[1], response[2])
            elif isinstance(response, list) and response[0] == b"subscribe":
                self._confirm(response[1])

    def _confirm(self, channel: bytes) -> None:
        """Redis answered a SUBSCRIBE: the channel is subscribed once it answered the
        last one sent (an earlier answer may precede an UNSUBSCRIBE)."""
        self._unanswered[channel] -= 1
        if self._unanswered[channel] > 0:
            return
        del self._unanswered[channel]
        if channel not in self._rooms:
            return  # the control channel, or a room unwatched since
        self._confirmed.add(channel)
        for future in self._confirming.pop(channel, []):
            if not future.done():
                future.set_result(None)

    async def _watch_health(self, connection: AbstractConnection) -> None:
        """Returns (raises) when Redis has been silent and unanswering for two periods:
        a hung server, or a network that dropped the connection without a word."""
        heard, pinged = self._heard, False
        while True:
            await asyncio.sleep(HEALTH_SECONDS)
            if self._heard != heard:
                heard, pinged = self._heard, False
            elif pinged:
                raise ConnectionError(f"Redis did not answer a PING in {HEALTH_SECONDS} s")
            else:
                await connection.send_command("PING", check_health=False)
                pinged = True

    def _receive(self, channel: bytes, message: bytes) -> None:
        if message.startswith(self.node):
            return  # our own, delivered here when it was published
        if channel == self._control:
            self._receive_action(message)
            return
        room = self._rooms.get(channel)
        if room is None:
            return  # unwatched since; its UNSUBSCRIBE is on its way
        self._metrics.received.inc()
        try:
            event = codec.decode(message, codec.NODE_ID_BYTES)
        except codec.BadMessage as exc:
            log.warning("cluster: an unreadable message on %r: %s", channel, exc)
            return
        try:
            self._deliver(room, event)
        except Exception:
            log.exception("cluster: delivering %r failed", event)

    def _receive_action(self, message: bytes) -> None:
        try:
            action, args = codec.decode_action(message)
        except codec.BadMessage as exc:
            log.warning("cluster: an unreadable action: %s", exc)
            return
        handler = self._handlers.get(action)
        try:
            if handler is not None:
                handler(args)
            else:
                self._act(action, args)
        except Exception:
            log.exception("cluster: %s %s failed", action, args)

    async def _follow(self, connection: AbstractConnection) -> None:
        """Bring the connection's subscriptions in line with the rooms watched."""
        while True:
            await self._wake_subscriber.wait()
            self._wake_subscriber.clear()
            changed, self._changed = self._changed, set()
            add = [c for c in changed if c in self._rooms and c not in self._subscribed]
            drop = [c for c in changed if c not in self._rooms and c in self._subscribed]
            try:
                await self._subscribe(connection, add)
                if drop and connection.is_connected:
                    self._subscribed.difference_update(drop)
                    await connection.send_command("UNSUBSCRIBE", *drop, check_health=False)
            except (RedisError, OSError):
                return  # the reader sees the same failure and reconnects
            self._metrics.subscriptions.set(len(self._subscribed))

    async def _subscribe(self, connection: AbstractConnection, channels: list[bytes]) -> None:
        for start in range(0, len(channels), SUBSCRIBE_CHUNK):
            chunk = channels[start : start + SUBSCRIBE_CHUNK]
            if not connection.is_connected:  # redis-py would open a new one silently
                raise ConnectionError("the subscription connection closed")
            self._subscribed.update(chunk)
            self._unanswered.update(chunk)
            await connection.send_command("SUBSCRIBE", *chunk, check_health=False)
        self._metrics.subscriptions.set(len(self._subscribed))

    def _connection(self) -> AbstractConnection:
        """A connection of its own (not the pool's): pub/sub and pipelining own it."""
        connection: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        return connection

    # --- the link's state ---------------------------------------------------------------

    def _client_name(self) -> str:
        return f"{self._prefix}:node:{self.node.hex()}"

    def _set_up(self, up: bool) -> None:
        if up and not self.up and self._down_since is not None:
            rooms = list(self._rooms.values())
            log.warning(
                "cluster: Redis link resumed after %.1f s; %d rooms may have missed events",
                time.monotonic() - self._down_since,
                len(rooms),
            )
            self._down_since = None
            self._on_resumed(rooms)
        self.up = up
        self._metrics.up.set(1 if up else 0)

    def _lost(self, exc: BaseException) -> None:
        """Once per outage: log it and count it; the link is down until reconnected."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._metrics.outages.inc()
            log.warning("cluster: Redis link down (%s: %s); reconnecting", type(exc).__name__, exc)
        self.up = False
        self._metrics.up.set(0)
