"""The realtime layer put together: delivery, the Socket.IO server, its namespaces,
and the broadcaster that services publish through."""

from __future__ import annotations

from aiohttp import web

from app.buckets import Rate
from app.config import Settings
from app.metrics import Metrics
from realtime.admission import Admission
from realtime.broadcaster import SocketBroadcaster
from realtime.delivery import Delivery
from realtime.namespaces.main import MainNamespace
from realtime.namespaces.yjs import YJS_RATE, YjsNamespace
from realtime.ratelimit import CommandLimits
from realtime.server import create_server
from realtime.state import Realtime


def create_realtime(
    app: web.Application, settings: Settings, metrics: Metrics
) -> tuple[Realtime, SocketBroadcaster]:
    """Build the realtime layer and attach its Socket.IO server to ``app``."""
    delivery = Delivery()
    admission = Admission(
        max_per_user=settings.max_connections_per_user,
        max_namespaces=settings.max_namespaces_per_connection,
    )
    sio = create_server(app, settings, delivery, admission, metrics)
    rt = Realtime(
        sio=sio,
        delivery=delivery,
        app=app,
        settings=settings,
        limits=command_limits(settings),
        admission=admission,
    )
    sio.register_namespace(MainNamespace(rt))
    sio.register_namespace(YjsNamespace(rt))
    return rt, SocketBroadcaster(rt)


def command_limits(settings: Settings) -> CommandLimits:
    """The rate limit classes of socket commands (the names their registrations use)."""
    s = settings
    return CommandLimits(
        {
            "room": Rate(s.rate_room_per_second, s.rate_room_burst),
            "chat": Rate(s.rate_chat_per_second, s.rate_chat_burst),
            "history": Rate(s.rate_history_per_second, s.rate_history_burst),
            "presence": Rate(s.rate_presence_per_second, s.rate_presence_burst),
            "typing": Rate(s.rate_typing_per_second, s.rate_typing_burst),
            "ai": Rate(s.rate_ai_per_second, s.rate_ai_burst),
            "session": Rate(s.rate_session_per_second, s.rate_session_burst),
            YJS_RATE: Rate(s.yjs_messages_per_second, s.yjs_message_burst),
        },
        user_factor=s.rate_user_factor,
    )
