"""The Socket.IO server mounted on the aiohttp application at ``/socket.io/``.

python-socketio stays the protocol layer (namespaces, connect and auth, packets,
acks); what it sends leaves through each connection's delivery ``Outbox``, and what
the application sends goes through ``Delivery`` only: this server refuses
python-socketio's own emit and rooms.
"""

from __future__ import annotations

import asyncio
import json
import logging
from functools import partial
from typing import Any, NoReturn

import orjson
import socketio
from aiohttp import web

from app.config import Settings
from app.errors import ServerFull
from app.metrics import Metrics
from app.wire import ServerEvent
from realtime.admission import Admission
from realtime.commands import ack_requested
from realtime.delivery import Delivery, Limits
from realtime.delivery.encoding import Encoded, encode_ack, encode_event
from realtime.delivery.manager import DeliveryManager
from realtime.delivery.metrics import DeliveryMetrics
from realtime.engine.server import EngineServer
from realtime.packets import CheckedPacket, UndecodablePacket, plain_event

log = logging.getLogger(__name__)

# What a connection keeps of its handshake's environ: python-socketio holds it for the
# connection's life, and the full one holds aiohttp's request (and its headers).
DURABLE_ENVIRON = ("REMOTE_ADDR", "HTTP_USER_AGENT", "HTTP_ORIGIN", "HTTP_X_FORWARDED_FOR")
SLOW_CONSUMER_MESSAGE = "the connection fell too far behind its rooms; reconnect to catch up"


class _OrjsonModule:
    """python-socketio's ``json=``: the stdlib's interface, orjson's speed."""

    @staticmethod
    def dumps(obj: Any, **_options: Any) -> str:
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(data: str | bytes, **_options: Any) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            # orjson refuses what the stdlib takes (integers past 64 bits, lone
            # surrogates): decoded here, the payload's validation answers with a code.
            return json.loads(data)


class RoomServer(socketio.AsyncServer):  # type: ignore[misc]
    manager: DeliveryManager

    def __init__(
        self,
        delivery: Delivery,
        *,
        admission: Admission,
        connect_timeout: float,
        outbox_limits: Limits,
        metrics: DeliveryMetrics,
        **options: Any,
    ) -> None:
        self.admission = admission
        self.connect_timeout = connect_timeout
        # Engine.IO connections that have no namespace yet: closed when it fires.
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        self._event_tasks: set[asyncio.Task[None]] = set()
        super().__init__(
            client_manager=DeliveryManager(delivery),
            json=_OrjsonModule,
            async_mode="aiohttp",
            outbox_limits=outbox_limits,
            delivery_metrics=metrics,
            **options,
        )
        self.eio.farewell = self._farewell
        self.eio.handle_now = self._handle_now
        self.manager.on_idle = self._idle
        self.packet_class = CheckedPacket  # after python-socketio set Packet.json

    def _engineio_server_class(self) -> type[EngineServer]:
        return EngineServer

    async def _handle_eio_message(self, eio_sid: str, data: str | bytes) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except UndecodablePacket as exc:
            # The client's fault, not ours: dropped, and so is a binary packet that
            # failed (python-socketio would take every later message for one more of
            # its attachments).
            self._binary_packet.pop(eio_sid, None)
            log.info("dropped a packet that could not be decoded (%s)", exc)
        except ValueError as exc:
            if str(exc) != "Unexpected binary packet":
                raise
            # python-socketio's refusal of a binary packet for a namespace this
            # connection has not connected (its attachments then fail to decode).
            log.info("dropped a binary packet for a namespace not connected")

    def _handle_now(self, eio_sid: str, data: str) -> bool:
        """A text event packet, from its decoding to its task, in the turn that read it
        (``EngineServer.handle_now``): what ``_handle_eio_message`` does for one, which
        awaits nothing, without the reader task and the chain of coroutines between."""
        if data[:1] != "2" or eio_sid in self._binary_packet:
            return False  # not an event, or an attachment of a binary packet
        event = plain_event(data)
        if event is None:
            try:
                pkt = self.packet_class(encoded_packet=data)
            except UndecodablePacket as exc:
                log.info("dropped a packet that could not be decoded (%s)", exc)
                return True
            event = pkt.namespace, pkt.id, pkt.data
        self._start_event(eio_sid, *event)
        return True

    async def _handle_event(
        self, eio_sid: str, namespace: str | None, id: int | None, data: list[Any]
    ) -> None:
        self._start_event(eio_sid, namespace, id, data)

    def _start_event(
        self, eio_sid: str, namespace: str | None, id: int | None, data: list[Any]
    ) -> None:
        """python-socketio's ``_handle_event``, without its log call and its engine's
        task wrappers: each event runs in a task of its own (a command may await a
        commit while the connection's next events are read), but for an at-once
        command (realtime/commands.py), started here and answered from a callback."""
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            return
        if namespace == "/":
            ack = None if id is None else partial(self._ack, eio_sid, id)
            if self.namespace_handlers["/"].start(sid, data[0], tuple(data[1:]), ack):
                return  # an at-once command: started, and answered by ``ack``
            run = self._run_command(sid, eio_sid, data, id)
        else:
            run = self._run_event(sid, eio_sid, data, namespace, id)
        task = asyncio.get_running_loop().create_task(run)
        self._event_tasks.add(task)
        task.add_done_callback(self._event_tasks.discard)

    async def _run_command(self, sid: str, eio_sid: str, data: list[Any], id: int | None) -> None:
        """A command on "/": its namespace's handler, then the ack, encoded directly (a
        command's result is JSON: checked payloads, strings, numbers)."""
        ack_requested.set(id is not None)  # in this event's own task: it leaks to no other
        result = await self.namespace_handlers["/"].trigger_event(data[0], sid, *data[1:])
        if id is not None and result != self.not_handled:
            self._ack(eio_sid, id, result)

    def _ack(self, eio_sid: str, id: int, result: dict[str, Any] | None) -> None:
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None:
            socket.outbox.push(encode_ack("/", id, [] if result is None else [result]))

    async def _run_event(
        self, sid: str, eio_sid: str, data: list[Any], namespace: str, id: int | None
    ) -> None:
        """An event on a document's namespace: python-socketio's handling (its acks may
        carry bytes)."""
        ack_requested.set(id is not None)
        await self._handle_event_internal(self, sid, eio_sid, data, namespace, id)

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        request: web.Request = environ["aiohttp.request"]
        durable = {key: environ[key] for key in DURABLE_ENVIRON if key in environ}
        durable["REMOTE_ADDR"] = request.remote or ""
        await super()._handle_eio_connect(eio_sid, durable)
        self._expect_namespace(eio_sid)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        # python-socketio's visits every namespace of the server (one per open document).
        for namespace in self.manager.namespaces_of(eio_sid):
            await self._handle_disconnect(eio_sid, namespace, reason)
        self.environ.pop(eio_sid, None)
        deadline = self._deadlines.pop(eio_sid, None)
        if deadline is not None:
            deadline.cancel()
        self.admission.release(eio_sid)

    def _idle(self, eio_sid: str) -> None:
        if eio_sid in self.eio.sockets:
            self._expect_namespace(eio_sid)  # its last namespace left; the transport stays

    def _expect_namespace(self, eio_sid: str) -> None:
        """Close the Engine.IO connection unless a namespace is connected in time (one
        that answers pings but never connects would otherwise stay for ever)."""
        if eio_sid in self._deadlines:
            return

        def check() -> None:
            del self._deadlines[eio_sid]
            socket = self.eio.sockets.get(eio_sid)
            if socket is not None and not self.manager.namespaces_of(eio_sid):
                log.info("closing a connection that connected no namespace in time")
                self.eio.spawn(socket.close(wait=False, reason=self.reason.SERVER_DISCONNECT))

        loop = asyncio.get_running_loop()
        self._deadlines[eio_sid] = loop.call_later(self.connect_timeout, check)

    def _farewell(self, eio_sid: str, code: str) -> list[Encoded]:
        """``session:ended`` on each namespace of a connection about to be closed."""
        notice = {"code": code, "message": SLOW_CONSUMER_MESSAGE}
        return [
            encode_event(namespace, ServerEvent.SESSION_ENDED, notice)
            for namespace in self.manager.namespaces_of(eio_sid)
        ]

    # One way out: these would bypass delivery.
    async def emit(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("send through realtime.delivery.Delivery")

    async def send(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("send through realtime.delivery.Delivery")

    async def call(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("send through realtime.delivery.Delivery")

    async def enter_room(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("rooms live in realtime.delivery.Delivery")

    async def leave_room(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("rooms live in realtime.delivery.Delivery")


def create_server(
    app: web.Application,
    settings: Settings,
    delivery: Delivery,
    admission: Admission,
    metrics: Metrics,
) -> RoomServer:
    """The Socket.IO server, attached to ``app`` (namespaces are registered by the caller)."""
    origins = settings.cors_origins
    sio = RoomServer(
        delivery,
        admission=admission,
        connect_timeout=settings.socket_connect_timeout_seconds,
        max_connections=settings.max_connections,
        outbox_limits=Limits(
            max_bytes=settings.delivery_max_buffered_bytes,
            max_events=settings.delivery_max_buffered_events,
        ),
        metrics=DeliveryMetrics(
            metrics.delivery_replaced,
            metrics.delivery_merged,
            metrics.delivery_dropped,
            metrics.delivery_slow_consumers,
        ),
        # None: same origin only (python-socketio's default); "*" or a list otherwise.
        cors_allowed_origins="*" if "*" in origins else (origins or None),
        websocket_compression=settings.websocket_compression,
        ping_interval=settings.socket_ping_interval_seconds,
        ping_timeout=settings.socket_ping_timeout_seconds,
        # Any namespace may be asked for: documents live at /yjs|<id> (YjsNamespace
        # refuses every other name).
        namespaces="*",
        # Room for the largest Yjs update plus its framing; beyond this the connection
        # is closed instead of our refusing the update.
        max_http_buffer_size=max(1_000_000, settings.yjs_max_update_bytes + 64 * 1024),
        logger=False,
        engineio_logger=False,
    )
    metrics.buffered.source = delivery.buffered
    sio.eio.on_full = metrics.socket_refused.labels(ServerFull.code).inc
    sio.attach(app, socketio_path="socket.io")
    return sio


async def shutdown(sio: RoomServer, *, timeout: float) -> None:  # noqa: ASYNC109 (bounds one step)
    """Close every client connection (shutdown's first phase); safe to call twice.

    A polling client that never polls again would never collect its close packet:
    the wait for them is bounded by ``timeout``.
    """
    if sio.eio.sockets:
        log.info("disconnecting %d socket clients", len(sio.eio.sockets))
        try:
            await asyncio.wait_for(sio.eio.disconnect(), timeout)
        except TimeoutError:
            log.warning("some socket clients did not take their close packet in %.1fs", timeout)
    await sio.shutdown()
