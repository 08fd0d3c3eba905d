"""Namespaces ``/yjs|<document id>``: the wire protocol of the ``y-socket.io`` provider.

What the provider (y-socket.io 1.1.3, ``src/client/provider.ts``) does, and the
server's side of it:

- it connects to ``/yjs|<room>`` with ``auth``: the access token, checked here with
  the caller's membership (non-members are refused, ``not_found``);
- on connect the server emits ``sync-step-1`` with its state vector and an ack: the
  provider answers with the update the server lacks (edits made offline);
- the provider emits ``sync-step-1`` with its state vector and an ack: the server
  answers with the update the provider lacks;
- ``sync-update`` both ways: the provider sends each local change; the server sends
  every stored update to every other connection of the document;
- ``awareness-update`` both ways, relayed; on connect the server sends every known
  state, and when a connection ends its states are removed for everyone at once.

Payloads are binary Yjs v1 encodings. Refusals (viewers' edits, malformed or
oversized updates, floods) are reported with the ``error`` event; a refused update
touches neither the document nor the other clients.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
import uuid
from typing import Any

import socketio
from pycrdt import Awareness, Decoder, Encoder

from app.errors import (
    AppError,
    BadRequest,
    InvalidUpdate,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ReadOnly,
    ServiceUnavailable,
)
from app.events import EventClass
from app.logs import correlation_id
from app.services.live_documents import LiveDocuments
from app.services.yjs_updates import EMPTY_UPDATE
from app.wire import ServerEvent
from realtime.commands import ack_requested
from realtime.delivery import Event
from realtime.namespaces.main import admit, authenticate, recheck, refused_unavailable
from realtime.protocol import event_name
from realtime.ratelimit import limited
from realtime.state import Realtime, yjs_room_of
from realtime.yjs_connections import YjsConnection, YjsConnections, YjsRoom
from storage.models import DocumentRole

log = logging.getLogger(__name__)

PREFIX = "/yjs|"
METRICS_NAMESPACE = "/yjs"
# A client's sync-step-1 costs a rate token per this many bytes of its answer.
SYNC_BYTES_PER_TOKEN = 64 * 1024
# The largest integer lib0 (Yjs' encoding in JavaScript) decodes.
MAX_SAFE_INTEGER = 2**53 - 1
# The rate limit class of what a provider sends (CommandLimits).
YJS_RATE = "yjs"


class YjsEvent:
    SYNC_STEP_1 = "sync-step-1"
    SYNC_UPDATE = "sync-update"
    AWARENESS_UPDATE = "awareness-update"


class Sent(enum.Enum):
    """Why a client sent an update."""

    EDIT = "edit"  # a sync-update: its own change
    SYNC = "sync"  # its answer to the server's sync-step-1 when it connected
    # Its answer to a later sync-step-1: the server asks again for what it lacks after
    # refusing a flood, failing to store, or rebuilding its copy from the log.
    RESYNC = "resync"


def namespace_of(document_id: uuid.UUID) -> str:
    return f"{PREFIX}{document_id}"


def awareness_event(document_id: uuid.UUID, update: bytes) -> Event:
    # A late reader needs each client's latest state, not every cursor move.
    return Event(YjsEvent.AWARENESS_UPDATE, update, EventClass.AWARENESS, key=document_id)


def document_of(namespace: str) -> uuid.UUID | None:
    if not namespace.startswith(PREFIX):
        return None
    try:
        return uuid.UUID(namespace.removeprefix(PREFIX))
    except ValueError:
        return None


def parse_awareness(update: bytes) -> list[tuple[int, int, Any]]:
    """(client id, clock, state or None) for each entry; ``InvalidUpdate`` otherwise,
    also for what would fail every JavaScript client it is relayed to: an id or clock
    past ``MAX_SAFE_INTEGER`` (lib0's decoder throws), a state that is not JSON
    (``NaN``, ``Infinity``: JSON.parse throws)."""
    try:
        decoder = Decoder(update)
        entries = []
        for _ in range(decoder.read_var_uint()):
            client_id = decoder.read_var_uint()
            clock = decoder.read_var_uint()
            if max(client_id, clock) > MAX_SAFE_INTEGER:
                raise ValueError("a client id or clock past 2^53 - 1")
            raw = decoder.read_var_string()
            state = json.loads(raw, parse_constant=_not_json) if raw else None
            entries.append((client_id, clock, state))
        return entries
    except (IndexError, RuntimeError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidUpdate("not a Yjs awareness update") from exc


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def encode_awareness(entries: list[tuple[int, int, Any]]) -> bytes:
    """An awareness update of ``entries`` (``parse_awareness``'s form)."""
    encoder = Encoder()
    encoder.write_var_uint(len(entries))
    for client_id, clock, state in entries:
        encoder.write_var_uint(client_id)
        encoder.write_var_uint(clock)
        encoder.write_var_string(json.dumps(state, separators=(",", ":")))
    return encoder.to_bytes()


def newer(awareness: Awareness, client_id: int, clock: int, state: Any) -> bool:
    """Whether an entry changes ``awareness`` (the rule of y-protocols' applyAwarenessUpdate)."""
    meta = awareness.meta.get(client_id)
    current = meta["clock"] if meta is not None else 0
    return current < clock or (current == clock and state is None and client_id in awareness.states)


class YjsNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """Every ``/yjs|...`` namespace (registered as python-socketio's catch-all ``*``)."""

    def __init__(self, rt: Realtime) -> None:
        super().__init__("*")
        self.rt = rt

    @property
    def documents(self) -> LiveDocuments:
        return self.rt.live_documents

    @property
    def connections(self) -> YjsConnections:
        return self.rt.yjs

    async def trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        sid = args[0]
        token = correlation_id.set(sid)
        try:
            if event == "connect" and ack_requested.get() is None:
                return await self.connect(namespace, sid, args[2] if len(args) > 2 else None)
            if event == "disconnect" and ack_requested.get() is None:
                return await self.disconnect(sid)
            connection = self.connections.by_sid.get(sid)
            if connection is None or connection.live is None:
                return None
            return await self.receive(connection, event, args[1:])
        finally:
            correlation_id.reset(token)

    # --- lifecycle --------------------------------------------------------------------

    async def connect(self, namespace: str, sid: str, auth: Any) -> None:
        metrics = self.rt.metrics
        try:
            document_id = document_of(namespace)
            if document_id is None:
                raise NotFound(f"no namespace {namespace!r}; documents are at /yjs|<id>")
            principal = await authenticate(self.rt, auth)
            view = await self.rt.documents.get(principal, document_id)
            await admit(self.rt, sid, namespace, principal)
        except AppError as exc:
            metrics.socket_refused.labels(exc.code).inc()
            log.info("yjs connection refused: %s", exc.code)
            raise socketio.exceptions.ConnectionRefusedError(
                exc.message, {"code": exc.code}
            ) from exc
        except Exception as exc:  # the database failed: say so, do not leave it hanging
            raise refused_unavailable(metrics) from exc
        connection = YjsConnection(
            sid,
            namespace,
            principal,
            view.role,
            self.rt.limits.connection_buckets(),
        )
        self.connections.by_sid[sid] = connection
        try:
            await recheck(self.rt, auth)
        except AppError as exc:
            self.connections.by_sid.pop(sid, None)
            metrics.socket_refused.labels(exc.code).inc()
            raise socketio.exceptions.ConnectionRefusedError(
                exc.message, {"code": exc.code}
            ) from exc
        except Exception as exc:
            self.connections.by_sid.pop(sid, None)
            raise refused_unavailable(metrics) from exc
        try:
            live = await self.documents.open(document_id)
        except Exception as exc:
            self.connections.by_sid.pop(sid, None)
            metrics.socket_refused.labels(ServiceUnavailable.code).inc()
            raise socketio.exceptions.ConnectionRefusedError(
                "the document could not be loaded; try again", {"code": ServiceUnavailable.code}
            ) from exc
        if self.connections.by_sid.get(sid) is not connection:  # gone while it loaded
            self.documents.close(live)
            ended = connection.ended or ("gone", "the connection ended")
            raise socketio.exceptions.ConnectionRefusedError(ended[1], {"code": ended[0]})
        connection.live = live
        room = self.connections.rooms.get(document_id)
        if room is None:
            awareness = Awareness(live.doc)
            awareness.set_local_state(None)  # the server itself is nobody
            room = self.connections.rooms[document_id] = YjsRoom(awareness)
        self.rt.delivery.join(yjs_room_of(document_id), sid)
        self._expire_with_token(connection)
        metrics.socket_connections.labels(METRICS_NAMESPACE).inc()
        log.info(
            "yjs connected",
            extra={"user_id": str(principal.user_id), "document_id": str(document_id)},
        )
        # After this handler returns, python-socketio sends the CONNECT packet; the
        # first sync runs after it.
        self.rt.spawn(self.start_sync(connection, Sent.SYNC))

    async def start_sync(self, connection: YjsConnection, answer: Sent) -> None:
        """Ask the client for what the server lacks (``answer``: what its answer is);
        on connect, also tell it everyone's awareness."""
        live = connection.live
        assert live is not None

        async def answered(*args: Any) -> None:
            if self.connections.by_sid.get(connection.sid) is connection and args:
                await self.receive_update(connection, args[0], answer)

        delivery = self.rt.delivery
        step_1 = Event(YjsEvent.SYNC_STEP_1, live.state_vector(), EventClass.CONTROL)
        delivery.to_connection(connection.sid, step_1, callback=answered)
        if answer is Sent.SYNC:
            awareness = self.connections.rooms[live.id].awareness
            update = awareness.encode_awareness_update(list(awareness.states))
            delivery.to_connection(connection.sid, awareness_event(live.id, update))

    def _expire_with_token(self, connection: YjsConnection) -> None:
        """The provider cannot renew its token over the socket (y-socket.io has no such
        message): the connection ends when the token expires, after the same grace as
        on ``/``; the application reconnects the provider with a fresh token."""
        expires_at = connection.principal.expires_at
        if expires_at is None:
            return
        delay = expires_at.timestamp() - time.time() + self.rt.settings.token_renew_grace_seconds

        def expire() -> None:
            message = "the access token expired; reconnect with a fresh one"
            self.rt.spawn(end_yjs_connection(self.rt, connection, "token_expired", message))

        connection.expiry = asyncio.get_running_loop().call_later(max(delay, 0), expire)

    async def disconnect(self, sid: str) -> None:
        connection = self.connections.by_sid.pop(sid, None)
        if connection is not None and connection.expiry is not None:
            connection.expiry.cancel()
        if connection is None or connection.live is None:
            return
        if connection.resync is not None:
            connection.resync.cancel()
        self.rt.metrics.socket_connections.labels(METRICS_NAMESPACE).dec()
        live = connection.live
        room = self.connections.rooms.get(live.id)
        members = yjs_room_of(live.id)
        self.rt.delivery.leave(members, sid)
        if room is not None:
            owned = room.owned_by(sid)
            for client_id in owned:
                del room.owners[client_id]
            gone = [i for i in owned if i in room.awareness.states]
            if gone:
                room.awareness.remove_awareness_states(gone, sid)
                update = room.awareness.encode_awareness_update(gone)
                self.rt.delivery.to_room(members, awareness_event(live.id, update))
            if members not in self.rt.delivery.rooms:
                del self.connections.rooms[live.id]
        self.documents.close(live)
        log.info("yjs disconnected", extra={"document_id": str(live.id)})

    # --- events -----------------------------------------------------------------------

    async def receive(self, connection: YjsConnection, event: str, args: tuple[Any, ...]) -> Any:
        data = args[0] if args else None
        if event == YjsEvent.SYNC_STEP_1:
            return await self.sync_step_1(connection, data)
        if event == YjsEvent.SYNC_UPDATE:
            await self.receive_update(connection, data, Sent.EDIT)
        elif event == YjsEvent.AWARENESS_UPDATE:
            await self.receive_awareness(connection, data)
        else:
            await self.tell(connection, event, BadRequest(f"unknown event {event!r}"))
        return None

    async def sync_step_1(self, connection: YjsConnection, state_vector: Any) -> bytes:
        assert connection.live is not None
        try:
            # Refused before the document is encoded: a refusal costs no encoding.
            wait = self.rt.limits.wait(connection.buckets, connection.user_id, YJS_RATE)
            if wait:
                raise limited("too many sync requests", wait)
            if not isinstance(state_vector, bytes):
                raise InvalidUpdate("send the state vector as binary")
            answer = connection.live.missing_for(state_vector)
            # Charged by what it returns (a one-byte state vector asks for the whole
            # document): a token, plus one for each SYNC_BYTES_PER_TOKEN, at most the
            # whole burst (what a client's first sync of the largest document costs).
            cost = 1 + len(answer) // SYNC_BYTES_PER_TOKEN
            wait = self.rt.limits.take(connection.buckets, connection.user_id, YJS_RATE, cost)
            if wait:
                raise limited("too many sync requests", wait)
            return answer
        except AppError as exc:
            await self.tell(connection, YjsEvent.SYNC_STEP_1, exc)
            # The provider applies whatever the ack carries: give it a valid no-op.
            return EMPTY_UPDATE

    async def receive_update(self, connection: YjsConnection, update: Any, sent: Sent) -> None:
        """Store and relay one update (an answer to our ``sync-step-1`` costs no rate
        token: the server asked for it)."""
        live = connection.live
        assert live is not None
        metrics = self.rt.metrics
        try:
            if not isinstance(update, bytes):
                raise InvalidUpdate("send the update as binary")
            wait = self._take(connection) if sent is Sent.EDIT else 0.0
            if wait:
                # Nothing is lost: a re-sync asks for everything the server lacks.
                self.resync_later(connection)
                raise limited("too many updates; a re-sync picks them up", wait)
            if connection.role is DocumentRole.VIEWER:
                # Dropped untold: a viewer's sync answer that carries nothing new, and
                # any answer to a re-sync. A copy rebuilt from the log can lack what
                # it relayed before (an update that yrs applied once and then cannot
                # apply in the rebuild is left out): the viewer holds it, and did
                # not edit.
                if sent is Sent.RESYNC or not live.would_change(update):
                    return
                raise ReadOnly()
            changed = await self.documents.submit(live, update, origin=connection.sid)
        except AppError as exc:
            refusal = exc
        except Exception:  # the database failed: the client is asked for it again later
            log.exception("could not store an update of %s", live.id)
            self.resync_later(connection)
            refusal = ServiceUnavailable("the update could not be stored; it is asked for again")
        else:
            # A flood is told once until its re-sync has run, other refusals until now.
            connection.told &= {RateLimited.code} if connection.resync is not None else set()
            metrics.yjs_updates.labels("applied" if changed else "unchanged").inc()
            return
        metrics.yjs_updates.labels(refusal.code).inc()
        # Each kind of refusal is told once, not once per update.
        if refusal.code not in connection.told:
            connection.told.add(refusal.code)
            await self.tell(connection, YjsEvent.SYNC_UPDATE, refusal)

    def _take(self, connection: YjsConnection) -> float:
        """A rate token of the connection and its user (0), or the seconds to wait."""
        return self.rt.limits.take(connection.buckets, connection.user_id, YJS_RATE)

    def resync_later(self, connection: YjsConnection) -> None:
        """Ask the client again for what the server lacks once it may send again."""
        if connection.resync is not None:
            return

        def resync() -> None:
            connection.resync = None
            if self.connections.by_sid.get(connection.sid) is connection:
                self.rt.spawn(self.start_sync(connection, Sent.RESYNC))

        loop = asyncio.get_running_loop()
        wait = self.rt.limits.wait(connection.buckets, connection.user_id, YJS_RATE)
        connection.resync = loop.call_later(wait + 0.05, resync)

    async def receive_awareness(self, connection: YjsConnection, update: Any) -> None:
        """Apply what is new to the room's awareness and relay only that.

        The y-socket.io provider re-sends every awareness change it applies, its
        peers' included: relaying those echoes would multiply every cursor move by
        the number of connections, so stale entries are dropped (and not charged).
        """
        live = connection.live
        assert live is not None
        room = self.connections.rooms[live.id]
        try:
            if not isinstance(update, bytes):
                raise InvalidUpdate("send the awareness update as binary")
            limit = self.rt.settings.yjs_max_awareness_bytes
            if len(update) > limit:
                raise PayloadTooLarge(f"awareness updates are limited to {limit} bytes")
            entries = parse_awareness(update)
            fresh = [
                entry
                for entry in entries
                if newer(room.awareness, *entry)
                # Another connection's client id is not this one's to set (a viewer
                # overwriting an editor's cursor and name): such entries are dropped.
                and room.owners.get(entry[0], connection.sid) == connection.sid
            ]
            if not fresh:
                return
            if len(fresh) != len(entries):
                update = encode_awareness(fresh)
            wait = self._take(connection)
            if wait:
                # Latest wins: the next one supersedes it; no need to re-sync.
                raise limited("too many awareness updates", wait)
        except AppError as exc:
            await self.tell(connection, YjsEvent.AWARENESS_UPDATE, exc)
            return
        room.awareness.apply_awareness_update(update, connection.sid)
        for client_id, _, state in fresh:
            if state is None:
                if room.owners.get(client_id) == connection.sid:
                    del room.owners[client_id]
            else:
                room.owners.setdefault(client_id, connection.sid)
        changed = [client_id for client_id, _, _ in fresh]
        update = room.awareness.encode_awareness_update(changed)
        self.rt.delivery.to_room(
            yjs_room_of(live.id), awareness_event(live.id, update), skip=connection.sid
        )

    async def tell(self, connection: YjsConnection, event: Any, exc: AppError) -> None:
        """Report a refusal; one that is not itself a rate refusal costs a rate token,
        and past the rate it is dropped untold (a flood of bad messages)."""
        if not isinstance(exc, RateLimited) and self._take(connection):
            return
        name = event_name(event)  # a name with a lone surrogate failed the error event
        log.info("yjs %s refused: %s", name, exc.code)
        self.rt.to_connection(connection.sid, ServerEvent.ERROR, {**exc.to_body(), "event": name})


async def end_yjs_connection(
    rt: Realtime, connection: YjsConnection, code: str, message: str
) -> None:
    """Tell a document connection why, then close it (the provider will not retry)."""
    if connection.live is None:
        # Still connecting (its document loading): python-socketio's disconnect does
        # nothing yet; forgotten here, its connect is refused once the load is done.
        if rt.yjs.by_sid.get(connection.sid) is connection:
            del rt.yjs.by_sid[connection.sid]
        connection.ended = (code, message)
        return
    rt.to_connection(connection.sid, ServerEvent.SESSION_ENDED, {"code": code, "message": message})
    await rt.sio.disconnect(connection.sid, namespace=connection.namespace)
