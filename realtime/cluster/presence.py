"""``SharedPresence``: who is in a room over every node, with a lease per node.

Each node keeps its own connections in ``Presence`` (realtime/presence.py), as alone,
and records in Redis (scripts.py has the keys) what the rooms need from it:

- **Arrivals and departures, once for the cluster.** ``PresenceChanges`` hands a room's
  batch (the users whose first connection *on this node* arrived, or whose last left)
  to ``announcer``; one task sends every batch waiting since its last round trip in one
  script, which records the node's users per room and answers which of them arrived in
  or left the cluster's room; only those are announced (``presence:changed``, on every
  node through the room's channel). A user with tabs on two nodes arrives once and
  leaves with their last tab anywhere. An event about a user that goes out at once
  (``presence:state``, ``typing``) waits for the batch that carries their arrival
  (``settled``). The same script writes the node's entries of the rooms that changed
  (a change that announces nothing, a state or a second tab, waits ``ENTRY_SECONDS``
  at most, so a room's cursors cost a write a quarter second, not one each).
- **Join acks.** A join lists this node's users from memory and the other nodes'
  from their entries in Redis, read once and kept for ``CACHE_SECONDS`` or until the
  room hears a ``presence:changed`` from another node (which is published after the
  entries it announces were written): a join costs no round trip while the room is
  quiet, and joins while a read is under way share it. Other nodes' connection states
  and counts can be that old (plus ``ENTRY_SECONDS``); their users are not.
- **Leases.** Every ``BEAT_SECONDS`` a node renews its lease (``LEASE_SECONDS``, with
  its connection and room counts, which ``GET /api/v1/cluster`` lists) and reaps the
  nodes whose lease expired: their records go, and the users nobody else holds are
  announced gone by the reaping node. A node killed with SIGKILL leaves presence
  within ``LEASE_SECONDS + BEAT_SECONDS``. A node found unregistered (its first beat,
  or taken for dead) and one that lost writes while Redis was away records everything
  it holds again (``SYNC``), announcing only what the cluster had not heard.
- **Connections per user** (``admit``): counted per node in Redis; a connection past
  the cap over all nodes is refused.

While Redis is away, a node announces its own changes as it sees them and serves its
join acks from memory; once Redis answers again it records its state afresh.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.exceptions import RedisError

from app.cluster import NodeStatus
from app.wire import ServerEvent
from realtime.cluster import scripts
from realtime.cluster.target import RedisTarget
from realtime.delivery import Event
from realtime.delivery.rooms import Room
from realtime.presence import (
    Departure,
    Presence,
    PresencePage,
    Publish,
    by_id,
    encode_page,
)

log = logging.getLogger(__name__)

LEASE_SECONDS = 8.0
BEAT_SECONDS = 2.0
CACHE_SECONDS = 1.0
ENTRY_SECONDS = 0.25  # a room's entries changed without an arrival: written this late
TIMEOUT_SECONDS = 2.0  # a script unanswered this long: Redis taken as away


@dataclass(slots=True)
class _Remote:
    """The other nodes' users of a room, as read from Redis."""

    users: dict[uuid.UUID, tuple[str, int, list[Any]]]  # username, count, connections
    encoded: dict[uuid.UUID, bytes]
    order: list[uuid.UUID]  # the users sorted by_id
    read_at: float


class SharedPresence(Presence):
    def __init__(
        self,
        target: RedisTarget,
        *,
        prefix: str,
        node: bytes,
        max_per_user: int,
    ) -> None:
        super().__init__()
        self._redis = target.client(
            socket_connect_timeout=TIMEOUT_SECONDS, socket_timeout=TIMEOUT_SECONDS
        )
        self._prefix = prefix
        self.node_id = node.hex()
        self._connections: Callable[[], dict[uuid.UUID, int]] = dict
        self._max_per_user = max_per_user
        self.started_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self._changes = self._redis.register_script(scripts.CHANGES)
        self._beat = self._redis.register_script(scripts.BEAT)
        self._sync = self._redis.register_script(scripts.SYNC)
        self._leave = self._redis.register_script(scripts.LEAVE)
        self._admit = self._redis.register_script(scripts.ADMIT)
        self._leases = self._redis.register_script(scripts.LEASES)
        self._publish: Publish = lambda document_id, left, joined: None
        # Waiting for the next round trip: batches in order, rooms whose entries
        # changed, connections closed per user; and what ``settled`` waits on.
        self._batches: list[tuple[uuid.UUID, list[uuid.UUID], dict[uuid.UUID, str]]] = []
        self._dirty: set[uuid.UUID] = set()
        self._released: dict[uuid.UUID, int] = {}
        self._next_done: asyncio.Future[None] | None = None
        self._waiting: dict[uuid.UUID, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._entry_timer: asyncio.TimerHandle | None = None
        self._remote: dict[uuid.UUID, _Remote] = {}
        # A read under way per room, with the stamp it started at; a room's last
        # presence:changed heard from another node, by stamp (a read that started
        # before it is not used by a join that entered after it).
        self._reading: dict[uuid.UUID, tuple[int, asyncio.Task[_Remote | None]]] = {}
        self._stamp = 0
        self._invalid: dict[uuid.UUID, int] = {}
        self._synced = False  # Redis holds what this node holds
        self._down = False
        # A beat asked for before its time (``recorded``), and who waits for the next.
        self._beat_now = asyncio.Event()
        self._beat_waiters: list[asyncio.Future[None]] = []
        self._tasks: list[asyncio.Task[None]] = []

    # --- Presence, recording what changed -------------------------------------------

    async def join(
        self, document_id: uuid.UUID, user_id: uuid.UUID, username: str, sid: str
    ) -> bool:
        self._changed(document_id)
        return await super().join(document_id, user_id, username, sid)

    async def leave(self, document_id: uuid.UUID, user_id: uuid.UUID, sid: str) -> Departure:
        departure = await super().leave(document_id, user_id, sid)
        self._changed(document_id)
        if departure is Departure.USER and not self.entries(document_id):
            # The room's channel may be unsubscribed now: what it would have said of
            # the copy (or of a read under way) is no longer heard.
            self._forget(document_id)
        return departure

    async def set_state(
        self, document_id: uuid.UUID, user_id: uuid.UUID, sid: str, state: dict[str, Any]
    ) -> bool:
        changed = await super().set_state(document_id, user_id, sid, state)
        if changed:
            self._changed(document_id)
        return changed

    def count_connections(self, counts: Callable[[], dict[uuid.UUID, int]]) -> None:
        """Where the users' connections on this node are counted (``Admission``)."""
        self._connections = counts

    def announcer(self, publish: Publish) -> Publish:
        self._publish = publish
        return self._queue

    async def settled(self, document_id: uuid.UUID) -> None:
        done = self._waiting.get(document_id)
        if done is not None:
            await asyncio.shield(done)

    async def page(
        self, document_id: uuid.UUID, after: uuid.UUID | None, limit: int
    ) -> PresencePage:
        remote = await self._read(document_id)
        local = self.entries(document_id)  # after the read: a join meanwhile is in it
        if remote is None or not remote.users:
            return await super().page(document_id, after, limit)
        mine, theirs = self.order(document_id), remote.order
        if after is not None:  # both from the first id past it (a slice, not a walk)
            mine = mine[bisect.bisect_right(mine, after.int, key=by_id) :]
            theirs = theirs[bisect.bisect_right(theirs, after.int, key=by_id) :]
        listed, more = _first(heapq.merge(mine, theirs, key=by_id), limit)
        both = remote.users.keys() & local.keys()  # usually none: each user on one node

        def entry(user_id: uuid.UUID) -> bytes:
            if user_id not in both:
                return local.get(user_id) or remote.encoded[user_id]
            user = self.user(document_id, user_id)
            assert user is not None
            _, count, connections = remote.users[user_id]
            here = [{"connection_id": sid, "state": state} for sid, state in user.states.items()]
            return orjson.dumps(
                {
                    "user_id": user.user_id,
                    "username": user.username,
                    "connection_count": len(user.connections) + count,
                    "connections": here + connections,
                }
            )

        return encode_page(listed, entry, len(local) + len(remote.users) - len(both), more)

    async def full_state(self, document_id: uuid.UUID, limit: int) -> PresencePage:
        """The first ``page``, the other nodes' entries read afresh (a resync)."""
        self._forget(document_id)
        return await self.page(document_id, None, limit)

    # --- hooks ------------------------------------------------------------------------

    def heard(self, room: Room, event: Event) -> None:
        """An event from another node: its arrivals and departures make this node's
        copy of the room's other entries stale."""
        if event.name == ServerEvent.PRESENCE_CHANGED and isinstance(room, tuple):
            self._forget(room[1])

    def _forget(self, document_id: uuid.UUID) -> None:
        self._stamp += 1
        self._invalid[document_id] = self._stamp
        self._remote.pop(document_id, None)

    def released(self, user_id: uuid.UUID) -> None:
        """One of the user's connections on this node closed."""
        self._released[user_id] = self._released.get(user_id, 0) + 1
        self._wake.set()

    async def admit(self, user_id: uuid.UUID) -> bool:
        """Count one more connection of the user on this node, unless the user holds
        the cap over every node (False). Redis away: counted here only (True)."""
        try:
            counted = await self._admit(
                args=[self._prefix, self.node_id, str(user_id), self._max_per_user]
            )
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return True
        return bool(counted)

    async def nodes(self) -> list[NodeStatus]:
        """The nodes whose lease is alive (this one from memory if Redis is away)."""
        try:
            leases = await self._leases(args=[self._prefix])
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return [self.stats()]
        nodes = [NodeStatus(**orjson.loads(lease)) for lease in leases]
        return sorted(nodes, key=lambda node: node.started_at)

    def stats(self) -> NodeStatus:
        return NodeStatus(
            node_id=self.node_id,
            started_at=self.started_at,
            connections=sum(self._connections().values()),
            rooms=len(self.documents()),
        )

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._send_changes(), name="presence-changes"),
            loop.create_task(self._keep_lease(), name="presence-lease"),
        ]

    async def close(self) -> None:
        """Send what waits, then leave: this node's users nobody else holds are
        announced gone (drain ended the connections first, so usually none)."""
        if self._batches or self._dirty or self._released:
            self._wake.set()
            done = self._next_done
            if done is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(done), TIMEOUT_SECONDS)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._entry_timer is not None:
            self._entry_timer.cancel()
        try:
            left = await self._leave(args=[self._prefix, self.node_id])
            self._announce_pairs(left, [])
        except (RedisError, OSError) as exc:
            log.warning("presence: could not leave the cluster (%s)", exc)
        await self._redis.aclose()

    # --- changes, batched ---------------------------------------------------------------

    def _changed(self, document_id: uuid.UUID) -> None:
        """The room's entries changed (a state, a tab): written with the next batch,
        or within ``ENTRY_SECONDS`` (the other nodes' copies are that old anyway)."""
        self._dirty.add(document_id)
        if self._entry_timer is None:
            self._entry_timer = asyncio.get_running_loop().call_later(
                ENTRY_SECONDS, self._entries_due
            )

    def _entries_due(self) -> None:
        self._entry_timer = None
        self._wake.set()

    def _queue(
        self, document_id: uuid.UUID, left: list[uuid.UUID], joined: dict[uuid.UUID, str]
    ) -> None:
        self._batches.append((document_id, left, joined))
        if self._next_done is None:
            self._next_done = asyncio.get_running_loop().create_future()
        self._waiting[document_id] = self._next_done
        self._wake.set()

    async def _send_changes(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batches, self._batches = self._batches, []
            dirty, self._dirty = self._dirty, set()
            released, self._released = self._released, {}
            done, self._next_done = self._next_done, None
            waiting = {d for d, future in self._waiting.items() if future is done}
            try:
                await self._send(batches, dirty, released)
            except Exception:  # a bug, not Redis (caught in _send): keep the task alive
                log.exception("presence: sending changes failed")
                self._synced = False  # recorded afresh at the next beat
                for document_id, left, joined in batches:
                    self._publish(document_id, left, joined)
            finally:
                for document_id in waiting:
                    if self._waiting.get(document_id) is done:
                        del self._waiting[document_id]
                if done is not None and not done.done():
                    done.set_result(None)

    async def _send(
        self,
        batches: list[tuple[uuid.UUID, list[uuid.UUID], dict[uuid.UUID, str]]],
        dirty: set[uuid.UUID],
        released: dict[uuid.UUID, int],
    ) -> None:
        if not self._synced:
            # Not recorded in Redis yet (or no longer trusted): the next beat records
            # everything; until then each node announces what it sees.
            for document_id, left, joined in batches:
                self._publish(document_id, left, joined)
            return
        last = {document_id: i for i, (document_id, _, _) in enumerate(batches)}
        ops: list[list[Any]] = []
        for i, (document_id, left, joined) in enumerate(batches):
            entry: str | bool = False
            if last[document_id] == i:
                entry = self._entry(document_id)
                dirty.discard(document_id)
            ops.append([str(document_id), [str(u) for u in left], [str(u) for u in joined], entry])
        ops.extend([str(d), [], [], self._entry(d)] for d in dirty)
        try:
            results = await self._changes(
                args=[
                    self._prefix,
                    self.node_id,
                    orjson.dumps(ops),
                    orjson.dumps({str(user): n for user, n in released.items()}),
                ]
            )
        except (RedisError, OSError) as exc:
            self._lost(exc)
            for document_id, left, joined in batches:
                self._publish(document_id, left, joined)
            return
        self._up()
        for (document_id, _, joined), (_, gone, came) in zip(batches, results, strict=False):
            arrived = {uuid.UUID(u.decode()) for u in came}
            if gone or arrived:
                self._publish(
                    document_id,
                    [uuid.UUID(u.decode()) for u in gone],
                    {user: name for user, name in joined.items() if user in arrived},
                )

    def _entry(self, document_id: uuid.UUID) -> str:
        entries = self.entries(document_id)
        if not entries:
            return ""
        return (b"[" + b",".join(entries.values()) + b"]").decode()

    # --- the lease ----------------------------------------------------------------------

    async def _keep_lease(self) -> None:
        while True:
            self._beat_now.clear()
            waiters, self._beat_waiters = self._beat_waiters, []
            try:
                await self._renew()
            except (RedisError, OSError) as exc:
                self._lost(exc)
            except Exception:
                log.exception("presence: renewing the lease failed")
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), BEAT_SECONDS)

    async def recorded(self, within: float) -> bool:
        """Renew the lease now (recording everything this node holds if Redis lost it
        or this node missed writes) and return True once Redis holds what this node
        holds; False if Redis did not answer ``within`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            waiter = loop.create_future()
            self._beat_waiters.append(waiter)
            self._beat_now.set()
            try:
                await asyncio.wait_for(asyncio.shield(waiter), deadline - loop.time())
            except TimeoutError:
                return False
            if self._synced and not self._down:
                return True
            if loop.time() + 0.2 >= deadline:
                return False
            await asyncio.sleep(0.2)  # Redis still away: not a beat per turn

    async def _renew(self) -> None:
        stats = self.stats()
        lease = orjson.dumps(
            {
                "node_id": stats.node_id,
                "started_at": stats.started_at,
                "connections": stats.connections,
                "rooms": stats.rooms,
            }
        )
        fresh, left = await self._beat(
            args=[self._prefix, self.node_id, lease, int(LEASE_SECONDS * 1000), self.started_at]
        )
        self._up()
        if left:
            log.info("presence: reaped nodes whose lease expired; %d users left", len(left))
            self._announce_pairs(left, [])
        old = time.monotonic() - CACHE_SECONDS
        for document_id in [d for d, r in self._remote.items() if r.read_at < old]:
            del self._remote[document_id]
        self._invalid = {d: stamp for d, stamp in self._invalid.items() if d in self._reading}
        if fresh or not self._synced:
            if fresh and self._synced:
                log.warning("presence: this node was taken for dead; recording it again")
            await self._record_all()

    async def _record_all(self) -> None:
        """Record everything this node holds, replacing what Redis had of it."""
        rooms = []
        for document_id in self.documents():
            users = [str(user_id) for user_id in self.entries(document_id)]
            rooms.append([str(document_id), users, self._entry(document_id)])
        connections = {str(user): n for user, n in self._connections().items()}
        gone, arrived = await self._sync(
            args=[self._prefix, self.node_id, orjson.dumps(rooms), orjson.dumps(connections)]
        )
        self._synced = True
        self._announce_pairs(gone, arrived)

    def _announce_pairs(self, gone: list[Any], arrived: list[Any]) -> None:
        by_room: dict[uuid.UUID, tuple[list[uuid.UUID], dict[uuid.UUID, str]]] = {}
        for doc, user in gone:
            document_id = uuid.UUID(doc.decode())
            by_room.setdefault(document_id, ([], {}))[0].append(uuid.UUID(user.decode()))
        for doc, user in arrived:
            document_id, user_id = uuid.UUID(doc.decode()), uuid.UUID(user.decode())
            present = self.user(document_id, user_id)
            if present is not None:
                by_room.setdefault(document_id, ([], {}))[1][user_id] = present.username
        for document_id, (left, joined) in by_room.items():
            self._forget(document_id)
            self._publish(document_id, left, joined)

    # --- the other nodes' entries ---------------------------------------------------------

    async def _read(self, document_id: uuid.UUID) -> _Remote | None:
        remote = self._remote.get(document_id)
        if remote is not None and remote.read_at > time.monotonic() - CACHE_SECONDS:
            return remote
        if self._down:
            return None
        reading = self._reading.get(document_id)
        if reading is None or reading[0] < self._invalid.get(document_id, 0):
            task = asyncio.get_running_loop().create_task(self._fetch(document_id, self._stamp))
            reading = self._reading[document_id] = (self._stamp, task)
            task.add_done_callback(lambda _: self._read_done(document_id, task))
        return await asyncio.shield(reading[1])

    def _read_done(self, document_id: uuid.UUID, task: asyncio.Task[_Remote | None]) -> None:
        reading = self._reading.get(document_id)
        if reading is not None and reading[1] is task:
            del self._reading[document_id]

    async def _fetch(self, document_id: uuid.UUID, stamp: int) -> _Remote | None:
        try:
            stored = await self._redis.hgetall(f"{self._prefix}:room:{document_id}")
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return None
        users: dict[uuid.UUID, tuple[str, int, list[Any]]] = {}
        for node, entries in stored.items():
            if node == self.node_id.encode():
                continue
            for entry in orjson.loads(entries):
                user_id = uuid.UUID(entry["user_id"])
                _, count, connections = users.get(user_id, (entry["username"], 0, []))
                users[user_id] = (
                    entry["username"],
                    count + entry["connection_count"],
                    connections + entry["connections"],
                )
        encoded = {
            user_id: orjson.dumps(
                {
                    "user_id": str(user_id),
                    "username": username,
                    "connection_count": count,
                    "connections": connections,
                }
            )
            for user_id, (username, count, connections) in users.items()
        }
        remote = _Remote(users, encoded, sorted(users, key=by_id), time.monotonic())
        if self._invalid.get(document_id, 0) <= stamp:
            self._remote[document_id] = remote
        return remote

    # --- Redis' state -------------------------------------------------------------------

    def _lost(self, exc: BaseException) -> None:
        if not self._down:
            log.warning("presence: Redis unavailable (%s: %s)", type(exc).__name__, exc)
        self._down = True
        self._synced = False

    def _up(self) -> None:
        if self._down:
            log.info("presence: Redis answers again")
        self._down = False


def _first(merged: Iterable[uuid.UUID], limit: int) -> tuple[list[uuid.UUID], bool]:
    """The first ``limit`` users of two id-ordered lists merged (a user on both nodes
    comes twice in a row: listed once), and whether more follow."""
    listed: list[uuid.UUID] = []
    for user_id in merged:
        if listed and user_id == listed[-1]:
            continue
        if len(listed) == limit:
            return listed, True
        listed.append(user_id)
    return listed, False
