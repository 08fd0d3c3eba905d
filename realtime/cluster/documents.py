"""``DocumentLog``: the live documents' updates between the nodes that hold them.

Each node that holds a document in memory (``LiveDocuments``, with Yjs clients or for
REST and the assistant alone) watches the document's channel, ``<prefix>:ylog:<id>``,
on the link's subscription connection, from before it reads the document from the
database until it drops it. The node that stores an update publishes it there with its
log row id (one message, the update as bytes); every other node holding the document
applies it to its copy, without storing it, and hands it to its own Yjs clients. A
node with no copy of a document is not subscribed, and hears nothing of it.

Snapshots: ``snapshot_turn`` is a lease in Redis (``SET NX PX`` with a token of this
node's, released by a script that checks the token), so that one node at a time
compacts a document. Redis unreachable, a node snapshots anyway: the advisory lock
taken by the snapshot (storage/repositories/crdt.py) keeps two snapshots apart, and
each catches up with the log first, so the lease saves work, not correctness.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from redis.exceptions import RedisError

from app.events import EventClass
from app.services.document_peers import Heard
from realtime.cluster.link import RedisLink
from realtime.cluster.target import RedisTarget
from realtime.delivery import Event
from realtime.delivery.rooms import Room

log = logging.getLogger(__name__)

ROOM_KIND = "ylog"
UPDATE = "update"
# How long a load waits for Redis to confirm the document's subscription. Past it
# the load goes on (the link is failing: the resync after it reads what was missed).
SUBSCRIBE_WAIT = 5.0
# The snapshot lease: longer than any snapshot takes, short enough that a node that
# died holding it delays the next snapshot by no more.
LEASE_MS = 30_000

# Deletes the lease only if it is still this holder's (its token).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def room_of(document_id: uuid.UUID) -> tuple[str, uuid.UUID]:
    return (ROOM_KIND, document_id)


class DocumentLog:
    """``DocumentPeers`` (app/services/document_peers.py) over the cluster link."""

    def __init__(self, link: RedisLink, target: RedisTarget, *, prefix: str) -> None:
        self._link = link
        # For the lease only; a hung Redis fails a snapshot's SET (then it goes on).
        self._redis = target.client(socket_connect_timeout=2.0, socket_timeout=5.0)
        self._release = self._redis.register_script(RELEASE)
        self._prefix = prefix
        self._heard: Heard = lambda document_id, update_id, update: None
        # The link's other messages go on to it (the rest of the chain, app/main.py).
        self.forward: Callable[[Room, Event], object] = lambda room, event: None

    def listen(self, heard: Heard) -> None:
        self._heard = heard

    async def watch(self, document_id: uuid.UUID) -> None:
        room = room_of(document_id)
        if not self._link.up:
            self._link.watch(room)
            return
        try:
            await asyncio.wait_for(self._link.subscribed(room), SUBSCRIBE_WAIT)
        except TimeoutError:
            log.warning("cluster: document %s subscribed without a confirmation", document_id)

    def unwatch(self, document_id: uuid.UUID) -> None:
        self._link.unwatch(room_of(document_id))

    def publish(self, document_id: uuid.UUID, update_id: int, update: bytes) -> None:
        event = Event(UPDATE, update, EventClass.DOCUMENT, key=update_id)
        self._link.publish(room_of(document_id), event)

    def heard(self, room: Room, event: Event) -> None:
        """``RedisLink``'s ``deliver``: updates on document channels; the rest goes on
        to ``forward``."""
        if not (isinstance(room, tuple) and room[0] == ROOM_KIND):
            self.forward(room, event)
        elif event.name != UPDATE or not isinstance(event.key, int):
            log.warning("cluster: an unexpected %r on the updates of %s", event.name, room[1])
        elif not isinstance(event.data, bytes | bytearray | memoryview):
            log.warning("cluster: an update of %s that is not binary", room[1])
        else:
            self._heard(room[1], event.key, bytes(event.data))

    @asynccontextmanager
    async def snapshot_turn(self, document_id: uuid.UUID) -> AsyncIterator[bool]:
        key = f"{self._prefix}:snapshot:{document_id}"
        token = os.urandom(16).hex()
        try:
            held = bool(await self._redis.set(key, token, nx=True, px=LEASE_MS))
        except (RedisError, OSError) as exc:
            log.warning("cluster: no snapshot lease for %s (%s); snapshotting", document_id, exc)
            yield True
            return
        if not held:
            yield False
            return
        try:
            yield True
        finally:
            try:
                await self._release(keys=[key], args=[token])
            except (RedisError, OSError) as exc:
                # The lease runs out by itself.
                log.warning("cluster: snapshot lease of %s not released (%s)", document_id, exc)

    async def close(self) -> None:
        await self._redis.aclose()
