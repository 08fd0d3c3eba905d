"""The realtime layer put together: delivery, the Socket.IO server, its namespaces,
and the broadcaster that services publish through."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from aiohttp import web

from app.buckets import Rate
from app.cluster import NodeStatus
from app.config import Settings
from app.keys import CLUSTER
from app.metrics import Metrics
from realtime.admission import Admission
from realtime.broadcaster import SocketBroadcaster
from realtime.cluster import ClusterMetrics, RedisLink
from realtime.cluster.presence import SharedPresence
from realtime.cluster.replies import ClusterReplies
from realtime.cluster.target import RedisTarget
from realtime.delivery import Delivery
from realtime.namespaces.main import MainNamespace
from realtime.namespaces.yjs import YJS_RATE, YjsNamespace
from realtime.presence import Presence
from realtime.ratelimit import CommandLimits
from realtime.server import create_server
from realtime.state import Realtime


def create_realtime(
    app: web.Application, settings: Settings, metrics: Metrics, cluster: RedisLink | None = None
) -> tuple[Realtime, SocketBroadcaster]:
    """Build the realtime layer and attach its Socket.IO server to ``app``; with
    ``cluster``, room events reach the rooms' members on the other nodes too."""
    delivery = Delivery(relay=cluster)
    shared = shared_presence(settings, cluster) if cluster is not None else None
    admission = Admission(
        max_per_user=settings.max_connections_per_user,
        max_namespaces=settings.max_namespaces_per_connection,
        shared=shared,
    )
    if shared is not None:
        shared.count_connections(admission.counts)
        delivery.on_remote = shared.heard
    sio = create_server(app, settings, delivery, admission, metrics)
    rt = Realtime(
        sio=sio,
        delivery=delivery,
        settings=settings,
        metrics=metrics,
        limits=command_limits(settings),
        admission=admission,
        presence=shared or Presence(),
        shared=shared,
        replies=cluster_replies(settings, cluster, delivery) if cluster is not None else None,
    )
    app[CLUSTER] = shared or LocalNode(rt.presence, admission)
    sio.register_namespace(MainNamespace(rt))
    sio.register_namespace(YjsNamespace(rt))
    return rt, SocketBroadcaster(rt, cluster)


def cluster_link(settings: Settings, metrics: Metrics) -> RedisLink | None:
    """The link to the other nodes, when ``REDIS_URL`` is set (started by app/main.py)."""
    target = redis_target(settings)
    if target is None:
        return None
    return RedisLink(
        target,
        prefix=settings.cluster_channel_prefix,
        metrics=ClusterMetrics(
            up=metrics.cluster_up,
            outages=metrics.cluster_outages,
            published=metrics.cluster_published,
            received=metrics.cluster_received,
            dropped=metrics.cluster_dropped,
            subscriptions=metrics.cluster_subscriptions,
        ),
    )


def shared_presence(settings: Settings, cluster: RedisLink) -> SharedPresence:
    """Presence and connection counts over every node (started by app/main.py)."""
    target = redis_target(settings)
    assert target is not None
    return SharedPresence(
        target,
        prefix=settings.cluster_channel_prefix,
        node=cluster.node,
        max_per_user=settings.max_connections_per_user,
    )


def cluster_replies(settings: Settings, cluster: RedisLink, delivery: Delivery) -> ClusterReplies:
    """The assistant's replies over every node (started by app/main.py)."""
    target = redis_target(settings)
    assert target is not None
    return ClusterReplies(
        target, prefix=settings.cluster_channel_prefix, link=cluster, delivery=delivery
    )


def redis_target(settings: Settings) -> RedisTarget | None:
    """The nodes' Redis (``REDIS_URL``, through ``REDIS_SENTINELS`` if set), or None."""
    if settings.redis_url is None:
        return None
    return RedisTarget(settings.redis_url, tuple(settings.redis_sentinels))


class LocalNode:
    """``GET /api/v1/cluster`` without Redis: this process alone."""

    def __init__(self, presence: Presence, admission: Admission) -> None:
        self.node_id = os.urandom(8).hex()
        self._started_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self._presence = presence
        self._admission = admission

    async def nodes(self) -> list[NodeStatus]:
        connections = sum(self._admission.counts().values())
        rooms = len(self._presence.documents())
        return [NodeStatus(self.node_id, self._started_at, connections, rooms)]


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
