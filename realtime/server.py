"""The Socket.IO server mounted on the aiohttp application at ``/socket.io/``."""

from __future__ import annotations

import logging

import socketio
from aiohttp import web

from realtime.namespaces.main import MainNamespace

log = logging.getLogger(__name__)


def create_socketio(app: web.Application, *, cors_origins: list[str]) -> socketio.AsyncServer:
    """Build the server, register the namespaces and attach it to ``app``."""
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        # None: same origin only (python-socketio's default); "*" or a list otherwise.
        cors_allowed_origins="*" if "*" in cors_origins else (cors_origins or None),
        logger=False,
        engineio_logger=False,
    )
    sio.register_namespace(MainNamespace(app))
    sio.attach(app, socketio_path="socket.io")
    return sio


async def disconnect_all(sio: socketio.AsyncServer) -> None:
    """Close every client connection (shutdown's first phase)."""
    if sio.eio.sockets:
        log.info("disconnecting %d socket clients", len(sio.eio.sockets))
        await sio.eio.disconnect()
    await sio.shutdown()
