"""The Socket.IO server mounted on the aiohttp application at ``/socket.io/``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import socketio
from aiohttp import web

from app.config import Settings
from realtime.broadcaster import SocketBroadcaster
from realtime.commands import ack_requested
from realtime.namespaces.main import MainNamespace
from realtime.namespaces.yjs import YjsNamespace
from realtime.state import Realtime

log = logging.getLogger(__name__)


class RoomServer(socketio.AsyncServer):  # type: ignore[misc]
    """Records, for each incoming event, whether the client asked for an ack."""

    async def _handle_event_internal(
        self, server: Any, sid: str, eio_sid: str, data: Any, namespace: str, id: Any
    ) -> None:
        # Each event runs in a task of its own, so this does not leak across events.
        ack_requested.set(id is not None)
        await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)


def create_realtime(app: web.Application, settings: Settings) -> tuple[Realtime, SocketBroadcaster]:
    """Build the server, register the namespaces and attach it to ``app``."""
    origins = settings.cors_origins
    sio = RoomServer(
        async_mode="aiohttp",
        # None: same origin only (python-socketio's default); "*" or a list otherwise.
        cors_allowed_origins="*" if "*" in origins else (origins or None),
        ping_interval=settings.socket_ping_interval_seconds,
        ping_timeout=settings.socket_ping_timeout_seconds,
        # Any namespace may be asked for: documents live at /yjs|<id> (YjsNamespace
        # refuses every other name).
        namespaces="*",
        # Room for the largest Yjs update plus its framing; beyond this Engine.IO
        # drops the connection instead of our refusing the update.
        max_http_buffer_size=max(1_000_000, settings.yjs_max_update_bytes + 64 * 1024),
        logger=False,
        engineio_logger=False,
    )
    rt = Realtime(sio=sio, app=app, settings=settings)
    sio.register_namespace(MainNamespace(rt))
    sio.register_namespace(YjsNamespace(rt))
    sio.attach(app, socketio_path="socket.io")
    return rt, SocketBroadcaster(rt)


async def shutdown(rt: Realtime, *, timeout: float) -> None:  # noqa: ASYNC109 (bounds one step)
    """Close every client connection (shutdown's first phase); safe to call twice.

    A polling client that never polls again would never collect its close packet:
    the wait for them is bounded by ``timeout``.
    """
    sio = rt.sio
    if sio.eio.sockets:
        log.info("disconnecting %d socket clients", len(sio.eio.sockets))
        try:
            await asyncio.wait_for(sio.eio.disconnect(), timeout)
        except TimeoutError:
            log.warning("some socket clients did not take their close packet in %.1fs", timeout)
    await sio.shutdown()
    await rt.close()
