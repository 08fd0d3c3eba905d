"""``EngineServer``: python-engineio's server with ``EngineSocket`` connections.

python-engineio keeps doing what it does well (HTTP routing, the handshake, CORS,
long-polling payloads); each connection is an ``EngineSocket`` and websockets are
taken over from aiohttp after their handshake (websocket.py). Its per-server
monitor task is off: each socket's timers enforce the ping timeout.

The seams with python-engineio's internals (``_handle_connect``, ``_async``) are
pinned by the version range in pyproject.toml and tested in tests/test_engine_seams.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import engineio
from aiohttp import hdrs, web
from engineio import packet as eio_packet
from wsproto.extensions import Extension

from app.errors import ServerFull
from realtime.delivery.encoding import Encoded
from realtime.delivery.metrics import DeliveryMetrics
from realtime.delivery.outbox import Flusher, Limits
from realtime.engine.compression import negotiate
from realtime.engine.socket import EngineSocket
from realtime.engine.websocket import WebSocketConnection, upgrade

log = logging.getLogger(__name__)

Farewell = Callable[[str, str], list[Encoded]]
# How long a client refused for being one too many is asked to wait.
FULL_RETRY_AFTER_SECONDS = 5


class EngineServer(engineio.AsyncServer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        outbox_limits: Limits,
        delivery_metrics: DeliveryMetrics,
        max_connections: int,
        websocket_compression: bool = False,
        **options: Any,
    ) -> None:
        self.outbox_limits = outbox_limits
        self.max_connections = max_connections
        self.delivery_metrics = delivery_metrics
        self.websocket_compression = websocket_compression
        self.flusher = Flusher()
        # What a connection closed for ``code`` is told first (set by the Socket.IO
        # layer: one notice per namespace it joined).
        self.farewell: Farewell = lambda sid, code: []
        # Told of each handshake refused for being past max_connections.
        self.on_full: Callable[[], None] = lambda: None
        # Handles a websocket message in the turn that read it, if it can do so without
        # waiting (the Socket.IO layer's text events): True when it did.
        self.handle_now: Callable[[str, str], bool] = lambda sid, data: False
        self._tasks: set[asyncio.Task[Any]] = set()
        options["async_mode"] = "aiohttp"
        super().__init__(monitor_clients=False, **options)
        # The driver's table is shared by every server: this one gets its own copy.
        self._async: dict[str, Any] = {**self._async, "websocket": _WebSocketUpgrade}

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coroutine`` in the background, referenced until done."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def on_message(self, sid: str, data: str | bytes) -> None:
        """A message read from a websocket, to the Socket.IO layer's handler (python-engineio's
        ``_trigger_event`` wraps each in a closure of its own)."""
        await self.handlers["message"](sid, data)

    async def _handle_connect(
        self, environ: dict[str, Any], transport: str, jsonp_index: int | None = None
    ) -> Any:
        """python-engineio's, with an ``EngineSocket`` (and no monitor task), and
        refused with 503 ``server_full`` past ``max_connections``."""
        if len(self.sockets) >= self.max_connections:
            self.on_full()
            body = {"error": ServerFull().to_body()}
            return {
                "status": "503 SERVICE UNAVAILABLE",
                "headers": [
                    ("Content-Type", "application/json"),
                    ("Retry-After", str(FULL_RETRY_AFTER_SECONDS)),
                ],
                "response": eio_packet.Packet.json.dumps(body).encode(),
            }
        sid = self.generate_id()
        socket = EngineSocket(self, sid)
        self.sockets[sid] = socket
        await socket.send(
            eio_packet.Packet(
                eio_packet.OPEN,
                {
                    "sid": sid,
                    "upgrades": self._upgrades(sid, transport),
                    "pingTimeout": int(self.ping_timeout * 1000),
                    "pingInterval": int(self.ping_interval + self.ping_interval_grace_period)
                    * 1000,
                    "maxPayload": self.max_http_buffer_size,
                },
            )
        )
        accepted = await self._trigger_event("connect", sid, environ, run_async=False)
        if accepted is not None and accepted is not True:
            del self.sockets[sid]
            log.warning("Application rejected connection")
            return self._unauthorized(accepted or None)
        socket.schedule_ping()
        if transport == "websocket":
            try:
                response = await socket.handle_get_request(environ)
            finally:
                if not socket.connected:  # the handshake failed: there is no connection
                    self.sockets.pop(sid, None)
                    await socket.close(wait=False, abort=True)
            return response
        socket.connected = True
        try:
            return self._ok(await socket.poll(), jsonp_index=jsonp_index)
        except engineio.exceptions.QueueEmpty:
            return self._bad_request()


class _WebSocketUpgrade:
    """python-engineio's websocket hook (``_async["websocket"]``) for aiohttp."""

    def __init__(
        self, handler: Callable[[WebSocketConnection], Awaitable[None]], server: EngineServer
    ) -> None:
        self.handler = handler
        self.server = server

    async def __call__(self, environ: dict[str, Any]) -> web.StreamResponse:
        request: web.Request = environ["aiohttp.request"]
        limit = self.server.max_http_buffer_size
        offers = request.headers.get(hdrs.SEC_WEBSOCKET_EXTENSIONS)
        deflate = negotiate(offers, limit) if offers and self.server.websocket_compression else None
        extensions: list[Extension] = [deflate[0]] if deflate else []
        connection = WebSocketConnection(limit, extensions)
        answer = deflate[1] if deflate else None
        response = await upgrade(request, connection, answer)
        if response.status == 101:
            await self.handler(connection)
        return response
