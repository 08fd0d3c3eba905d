"""The realtime layer put together: delivery, the Socket.IO server, its namespaces,
and the broadcaster that services publish through."""

from __future__ import annotations

from aiohttp import web

from app.config import Settings
from app.metrics import Metrics
from realtime.broadcaster import SocketBroadcaster
from realtime.delivery import Delivery
from realtime.namespaces.main import MainNamespace
from realtime.namespaces.yjs import YjsNamespace
from realtime.server import create_server
from realtime.state import Realtime


def create_realtime(
    app: web.Application, settings: Settings, metrics: Metrics
) -> tuple[Realtime, SocketBroadcaster]:
    """Build the realtime layer and attach its Socket.IO server to ``app``."""
    delivery = Delivery()
    sio = create_server(app, settings, delivery, metrics)
    rt = Realtime(sio=sio, delivery=delivery, app=app, settings=settings)
    sio.register_namespace(MainNamespace(rt))
    sio.register_namespace(YjsNamespace(rt))
    return rt, SocketBroadcaster(rt)
