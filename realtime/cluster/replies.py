"""The assistant's replies across nodes: who streams what, the text so far, cancels.

A reply runs on the node that was asked (its owner); its events reach the room on every
node as any room event does (``Delivery.to_room``). What the other nodes need besides
lives in Redis, under the cluster prefix ``P``:

- ``P:ai:room:<doc>``: hash, reply -> "<owner node> <user>": the room's replies in
  flight, which the per-room limit counts (``AI_REPLIES_PER_ROOM``);
- ``P:ai:user:<user>``: hash, reply -> doc: the user's, for ``AI_REPLIES_PER_USER``;
- ``P:ai:leases``: sorted set, "<doc> <reply> <user>" -> when its lease ends (ms). The
  owner renews its replies' leases every ``BEAT_SECONDS``; a reply whose lease ended
  (its node was killed) is removed by the next node that admits a reply or beats, which
  tells the room (``ai:error``, once: the script that removes it says who did);
- ``P:ai:text:<reply>``: list, the reply's chunks in ``seq`` order (its length is the
  ``seq`` of the last).

Admission is one script (expired leases removed, both counts checked, the reply
added; the scripts are in reply_scripts.py), so two nodes asked at once cannot both
pass a limit of one.

A chunk's ``RPUSH`` is queued on the link's publishing connection just before the
chunk's ``PUBLISH`` (``RedisLink.command``): Redis runs them in that order, so a read
of the text sees exactly the chunks published before it. No round trip per chunk.

Joining mid-reply on a node that does not own the reply: each node keeps, per room
with members here, a copy of the other nodes' replies in flight (``_Mirror``), made
from what it hears. A join reads it in the turn it enters the room (as a single node
reads its own replies), so every later chunk reaches it live, once. A node's first
member of a room (the room's channel is subscribed and confirmed by then, see
chat.py) makes the copy: it reads the replies and their chunks from Redis in one
script; what is heard of the room's replies meanwhile is held and, once the read is
in, delivered but for what the read already holds (a chunk with a ``seq`` the text
has, the start of a reply it has, the end of a reply it did not see).

Redis away: an ask is admitted on this node's counts alone; chunks the link dropped
are written again, the whole list, with the owner's first chunk after it is back; a
node whose copy hears a chunk past a gap reads that reply's text again (``_mend``).

Cancelling from any node: the node that gets ``ai:cancel`` for a reply it does not
own finds the owner in Redis and asks it on the control channel; the owner cancels
and answers; the ack waits for the answer, ``CANCEL_TIMEOUT`` at most
(``ai_unavailable`` past it: the owner is gone, its lease ends soon).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from app.errors import AiBusy, AiUnavailable, NotFound
from app.events import EventClass
from app.wire import ServerEvent
from realtime.cluster.link import Deliver, RedisLink
from realtime.cluster.reply_scripts import ADMIT, BEAT, READ, RELEASE
from realtime.cluster.target import RedisTarget
from realtime.delivery import Delivery, Event
from realtime.delivery.rooms import Room
from realtime.state import room_of

log = logging.getLogger(__name__)

LEASE_SECONDS = 8.0
BEAT_SECONDS = 2.0
CANCEL_TIMEOUT = 5.0  # the owner's answer to a cancel, at most
TIMEOUT_SECONDS = 2.0  # a script unanswered this long: Redis taken as away
STOPPED = "the server streaming this reply stopped"

CANCEL = "ai:cancel"  # the control channel's actions of this module
CANCELLED = "ai:cancelled"
_EVENTS = frozenset(
    {ServerEvent.AI_STARTED, ServerEvent.AI_CHUNK, ServerEvent.AI_DONE, ServerEvent.AI_ERROR}
)

# A reply's owner cancels it: (document, reply, by whom) -> whether it was streaming.
CancelHere = Callable[[uuid.UUID, uuid.UUID, uuid.UUID], Awaitable[bool]]


@dataclass(slots=True)
class _Text:
    parts: list[str] = field(default_factory=list)
    seq: int = 0


@dataclass(eq=False, slots=True)
class _Own:
    """A reply of this node, as Redis has it (or should)."""

    entry: str  # "<doc> <reply> <user>", its lease's member
    key: str  # its chunks' list
    chunks: list[str] = field(default_factory=list)
    behind: bool = False  # chunks were not written (the link was down): all again


@dataclass(eq=False, slots=True)
class _Mirror:
    """The other nodes' replies in flight in one room, as this node's members saw them."""

    replies: dict[str, _Text] = field(default_factory=dict)
    loading: bool = True
    held: list[Event] = field(default_factory=list)  # heard while loading
    waiting: list[asyncio.Future[list[dict[str, Any]]]] = field(default_factory=list)
    gaps: set[str] = field(default_factory=set)  # replies missing chunks (an outage)
    mending: bool = False

    def so_far(self) -> list[dict[str, Any]]:
        return [
            {"reply_id": reply_id, "seq": text.seq, "text": "".join(text.parts)}
            for reply_id, text in self.replies.items()
        ]


class ClusterReplies:
    """The assistant's ``ReplyCluster`` (app/services/assistant.py) over Redis."""

    def __init__(
        self, target: RedisTarget, *, prefix: str, link: RedisLink, delivery: Delivery
    ) -> None:
        self._redis = target.client(
            socket_connect_timeout=TIMEOUT_SECONDS, socket_timeout=TIMEOUT_SECONDS
        )
        self._prefix = prefix
        self._link = link
        self._delivery = delivery
        self._node = link.node.hex()
        self._admit = self._redis.register_script(ADMIT)
        self._beat = self._redis.register_script(BEAT)
        self._read = self._redis.register_script(READ)
        self._release = self._redis.register_script(RELEASE)
        self.forward: Deliver = delivery.to_local_room  # what is not the assistant's
        self._cancel_here: CancelHere | None = None
        self._mine: dict[uuid.UUID, _Own] = {}
        self._unreleased: list[str] = []  # entries released while the link was down
        self._mirrors: dict[uuid.UUID, _Mirror] = {}
        self._asks: dict[str, asyncio.Future[str]] = {}  # cancels sent, by request id
        self._tasks: set[asyncio.Task[None]] = set()
        self._beating: asyncio.Task[None] | None = None
        self._down = False
        # Cancels between nodes: asked of the owner, answered by it.
        link.handle(CANCEL, self._asked_to_cancel)
        link.handle(CANCELLED, self._answered)

    def use(self, cancel_here: CancelHere) -> None:
        """The assistant's own cancel (an owner asked by another node)."""
        self._cancel_here = cancel_here

    async def start(self) -> None:
        self._beating = asyncio.get_running_loop().create_task(self._keep_leases())

    async def close(self) -> None:
        """After the assistant closed (its replies ended and released)."""
        tasks = [t for t in (self._beating, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._redis.aclose()

    # --- the owner: admission, chunks, the end ------------------------------------------

    async def admit(
        self,
        reply_id: uuid.UUID,
        document_id: uuid.UUID,
        user_id: uuid.UUID,
        *,
        per_room: int,
        per_user: int,
    ) -> None:
        """Count the reply in the room's and the user's replies over every node, or
        raise ``AiBusy``. With Redis away, this node's own counts (already checked)
        are all there is: the reply is admitted."""
        entry = f"{document_id} {reply_id} {user_id}"
        args: list[str | int] = [self._prefix, str(document_id), str(reply_id), str(user_id)]
        args += [self._node, per_room, per_user, int(LEASE_SECONDS * 1000)]
        try:
            refused, gone = await self._admit(args=args)
        except (RedisError, OSError) as exc:
            self._away(exc)
            return
        self._back()
        self._expired(gone)
        if refused == 1:
            raise AiBusy()
        if refused == 2:
            raise AiBusy("you have as many replies streaming as you may")
        self._mine[reply_id] = _Own(entry, f"{self._prefix}:ai:text:{reply_id}")

    def streamed(self, reply_id: uuid.UUID, chunk: str) -> None:
        """A chunk, just before its ``ai:chunk`` is handed to delivery."""
        own = self._mine.get(reply_id)
        if own is None:
            return
        own.chunks.append(chunk)
        if not self._link.up:
            own.behind = True  # dropped: the list is written whole once the link is back
        elif own.behind:
            own.behind = False
            self._link.command("DEL", own.key)
            self._link.command("RPUSH", own.key, *own.chunks)
        else:
            self._link.command("RPUSH", own.key, chunk)

    def ended(self, reply_id: uuid.UUID) -> None:
        """The reply's last event was handed to delivery (or it never started)."""
        own = self._mine.pop(reply_id, None)
        if own is None:
            return
        if self._link.up:
            self._link.command("EVAL", RELEASE, 0, self._prefix, *own.entry.split())
        else:  # released at the next beat Redis answers (its lease ends otherwise)
            self._unreleased.append(own.entry)

    # --- cancelling from any node -------------------------------------------------------

    async def owner(self, document_id: uuid.UUID, reply_id: uuid.UUID) -> str | None:
        """The node streaming the reply in this room, if another one is."""
        try:
            entry = await self._redis.hget(f"{self._prefix}:ai:room:{document_id}", str(reply_id))
        except (RedisError, OSError) as exc:
            raise AiUnavailable("the replies of the other servers cannot be reached") from exc
        if entry is None:
            return None
        node = (entry.decode() if isinstance(entry, bytes) else entry).split()[0]
        return None if node == self._node else node

    async def cancel(
        self, owner: str, document_id: uuid.UUID, reply_id: uuid.UUID, user_id: uuid.UUID
    ) -> None:
        """Ask ``owner`` to cancel the reply; return once it did (``NotFound`` if it
        had ended, ``AiUnavailable`` with no answer in ``CANCEL_TIMEOUT``)."""
        request = uuid.uuid4().hex
        answer = asyncio.get_running_loop().create_future()
        self._asks[request] = answer
        try:
            self._link.announce(
                CANCEL, owner, str(document_id), str(reply_id), str(user_id), self._node, request
            )
            async with asyncio.timeout(CANCEL_TIMEOUT):
                result = await answer
        except TimeoutError:
            raise AiUnavailable(
                "the server streaming this reply did not answer; it ends within "
                f"{LEASE_SECONDS + BEAT_SECONDS:.0f} s if that server is gone"
            ) from None
        finally:
            self._asks.pop(request, None)
        if result != "cancelled":
            raise NotFound("no such reply streaming in this room")

    def _asked_to_cancel(self, args: list[str | None]) -> None:
        owner, document, reply, user, asker, request = args
        if owner == self._node and document and reply and user and asker and request:
            self._spawn(self._cancel_for(asker, request, document, reply, user))

    def _answered(self, args: list[str | None]) -> None:
        asker, request, result = args
        answer = self._asks.get(request or "") if asker == self._node else None
        if answer is not None and not answer.done():
            answer.set_result(result or "")

    async def _cancel_for(
        self, asker: str, request: str, document: str, reply: str, user: str
    ) -> None:
        assert self._cancel_here is not None
        done = await self._cancel_here(uuid.UUID(document), uuid.UUID(reply), uuid.UUID(user))
        self._link.announce(CANCELLED, asker, request, "cancelled" if done else "not_found")

    # --- joins and what is heard --------------------------------------------------------

    def heard(self, room: Room, event: Event) -> None:
        """``RedisLink``'s ``deliver``: the assistant's events through the room's copy,
        the others to ``forward``."""
        if event.name not in _EVENTS or not (isinstance(room, tuple) and room[0] == "doc"):
            self.forward(room, event)
            return
        document_id = room[1]
        mirror = self._mirrors.get(document_id)
        if mirror is not None and not self._delivery.rooms.members(room):
            del self._mirrors[document_id]  # nobody here: a join reads afresh
            mirror = None
        if mirror is None:
            self._delivery.to_local_room(room, event)
        elif mirror.loading:
            mirror.held.append(event)
        elif _apply(mirror, event, replaying=False):
            self._delivery.to_local_room(room, event)
            if mirror.gaps and not mirror.mending:
                mirror.mending = True
                self._spawn(self._mend(mirror))

    def entered(self, document_id: uuid.UUID) -> asyncio.Future[list[dict[str, Any]]]:
        """The other nodes' replies streaming in the room (as ``Reply.so_far``), for a
        connection that entered it in this turn: each later chunk reaches it live."""
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        mirror = self._mirrors.get(document_id)
        alone = len(self._delivery.rooms.members(room_of(document_id))) <= 1
        if mirror is None or (alone and not mirror.loading):
            mirror = self._mirrors[document_id] = _Mirror()
            self._spawn(self._load(document_id, mirror))
            if len(self._mirrors) > 2 * len(self._delivery.rooms):
                self._sweep()
        if mirror.loading:
            mirror.waiting.append(future)
        else:
            future.set_result(mirror.so_far())
        return future

    async def _load(self, document_id: uuid.UUID, mirror: _Mirror) -> None:
        rows: list[Any] = []
        try:
            rows = await self._read(args=[self._prefix, str(document_id)])
        except (RedisError, OSError) as exc:
            self._away(exc)
        for reply, node, chunks in rows:
            if node.decode() != self._node:  # this node's own are the assistant's
                parts = [chunk.decode() for chunk in chunks]
                mirror.replies[reply.decode()] = _Text(parts, len(parts))
        # One turn: the joins' text so far, then what was heard meanwhile past it.
        so_far = mirror.so_far()
        for future in mirror.waiting:
            if not future.done():
                future.set_result(so_far)
        mirror.waiting.clear()
        mirror.loading = False
        room = room_of(document_id)
        held, mirror.held = mirror.held, []
        for event in held:
            if _apply(mirror, event, replaying=True):
                self._delivery.to_local_room(room, event)

    async def _mend(self, mirror: _Mirror) -> None:
        """Read again the text of the replies whose copy missed chunks (lost in a Redis
        outage): its first ``seq`` chunks, which Redis held before it was published."""
        try:
            while mirror.gaps:
                reply_id = mirror.gaps.pop()
                try:
                    key = f"{self._prefix}:ai:text:{reply_id}"
                    chunks = [_str(c) for c in await self._redis.lrange(key, 0, -1)]
                except (RedisError, OSError) as exc:
                    self._away(exc)
                    chunks = []
                text = mirror.replies.get(reply_id)
                if text is None:
                    continue
                if len(chunks) >= text.seq:
                    text.parts = chunks[: text.seq]
                else:  # ended meanwhile, or its node's text has gaps too: none is better
                    del mirror.replies[reply_id]
        finally:
            mirror.mending = False

    def _sweep(self) -> None:
        members = self._delivery.rooms.members
        for document_id in [
            d for d, m in self._mirrors.items() if not m.loading and not members(room_of(d))
        ]:
            del self._mirrors[document_id]

    # --- leases -------------------------------------------------------------------------

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(BEAT_SECONDS)
            try:
                for entry in list(self._unreleased):
                    await self._release(args=[self._prefix, *entry.split()])
                    self._unreleased.remove(entry)
                entries = [own.entry for own in self._mine.values()]
                gone = await self._beat(args=[self._prefix, int(LEASE_SECONDS * 1000), *entries])
            except (RedisError, OSError) as exc:
                self._away(exc)
                continue
            self._back()
            self._expired(gone)

    def _expired(self, gone: list[bytes]) -> None:
        """Replies whose node stopped renewing them: their rooms are told, once."""
        for entry in gone:
            document, reply, _ = entry.decode().split()
            document_id, reply_id = uuid.UUID(document), uuid.UUID(reply)
            if reply_id in self._mine:  # this node's: it stalled past its lease
                log.warning("cluster: the lease of reply %s lapsed while it streamed", reply)
                continue
            log.info("cluster: reply %s in %s ended with its node", reply, document)
            mirror = self._mirrors.get(document_id)
            if mirror is not None:
                mirror.replies.pop(reply, None)
            data: dict[str, Any] = {
                "document_id": document,
                "reply_id": reply,
                "status": "failed",
                "message": None,
                "usage": {
                    "input_tokens": 0,
                    "output_tokens": 0,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
                "stop_reason": None,
                "citations": [],
                "error": AiUnavailable(STOPPED).to_body(),
            }
            event = Event(ServerEvent.AI_ERROR, data, EventClass.CHAT, key=reply_id)
            self._delivery.to_room(room_of(document_id), event)

    def _away(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            log.warning("cluster: replies' Redis unavailable (%s: %s)", type(exc).__name__, exc)

    def _back(self) -> None:
        if self._down:
            self._down = False
            log.info("cluster: replies' Redis back")

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cluster: a replies task failed", exc_info=task.exception())


def _apply(mirror: _Mirror, event: Event, *, replaying: bool) -> bool:
    """Record a heard event in the room's copy; whether its members get it. Replaying
    (what was held while the copy was read), the read already holds some of it."""
    data: dict[str, Any] = event.data
    reply_id = str(data.get("reply_id"))
    known = mirror.replies.get(reply_id)
    if event.name == ServerEvent.AI_STARTED:
        if known is not None:
            return False  # in the text so far (seq 0)
        mirror.replies[reply_id] = _Text()
        return True
    if event.name == ServerEvent.AI_CHUNK:
        if known is None:
            # Ended before the read (replaying), or its start was lost (an outage):
            # passed on, not copied.
            return not replaying
        seq = int(data["seq"])
        if seq <= known.seq:
            return False  # in the text so far
        first = int(data.get("first_seq") or seq)
        if first > known.seq + 1:
            mirror.gaps.add(reply_id)  # chunks were lost: the text is read again
        known.parts.append(str(data["text"]))
        known.seq = seq
        return True
    # ai:done, ai:error
    if known is None and replaying:
        return False  # ended before the read: the joins never heard of it
    mirror.replies.pop(reply_id, None)
    return True


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
