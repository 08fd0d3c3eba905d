"""The default namespace ``/``: authenticated connections and their commands."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import socketio

from app.auth.principal import Principal
from app.errors import AppError, Forbidden, ServiceUnavailable, Unauthorized
from app.logs import correlation_id
from app.metrics import Metrics
from app.wire import ServerEvent, iso
from realtime.commands import Envelope, ack_requested
from realtime.connections import Connection
from realtime.namespaces.rooms import commands, joined_rooms, leave_room
from realtime.protocol import AuthRefresh, event_name
from realtime.state import Call, Realtime, user_room_of

log = logging.getLogger(__name__)

NAMESPACE = "/"
LIFECYCLE_EVENTS = frozenset({"connect", "disconnect"})


async def admit(rt: Realtime, sid: str, namespace: str, principal: Principal) -> None:
    """Count the connection's transport for its user, within the caps
    (``TooManyNamespaces``, ``TooManyConnections``; with Redis, over every node)."""
    transport = rt.sio.manager.eio_sid_from_sid(sid, namespace)
    socket = rt.sio.eio.sockets.get(transport) if transport is not None else None
    if transport is None or socket is None or socket.closing or socket.closed:
        # Gone while the token was checked: its release has run already, and counting
        # it now would hold one of the user's connections for ever.
        raise ServiceUnavailable("the connection ended while it was checked")
    rt.admission.check_namespaces(len(rt.sio.manager.namespaces_of(transport)))
    rt.admission.admit(transport, principal.user_id)
    await rt.admission.admit_shared(transport, principal.user_id)


async def authenticate(rt: Realtime, auth: Any) -> Principal:
    """The principal for a handshake's ``auth: {"token": ...}`` payload."""
    token = auth.get("token") if isinstance(auth, dict) else None
    if not isinstance(token, str) or not token:
        raise Unauthorized("send the access token as auth: {token: '...'}")
    return await rt.auth.authenticate_token(token)


async def recheck(rt: Realtime, auth: Any) -> None:
    """Check the token again once its connection is registered: a logout or a disabling
    that committed while the first check awaited the database was told to the
    registered connections only. Usually answered from the caches (which those changes
    drop, so it reads them)."""
    await authenticate(rt, auth)


@commands("auth:refresh", AuthRefresh, rate="session")
async def auth_refresh(call: Call, payload: AuthRefresh) -> dict[str, Any]:
    """A fresh access token for this connection (answer to ``auth:expiring``)."""
    principal = await call.rt.auth.authenticate_token(payload.token)
    if principal.user_id != call.connection.user_id:
        raise Forbidden("the token belongs to another user")
    call.connection.principal = principal
    schedule_renewal(call.rt, call.connection)
    assert principal.expires_at is not None
    return {"expires_at": iso(principal.expires_at)}


def schedule_renewal(rt: Realtime, connection: Connection) -> None:
    """Ask for a fresh token before this one expires; end the connection if none comes."""
    connection.cancel_timers()
    expires_at = connection.principal.expires_at
    if expires_at is None:
        return
    remaining = expires_at.timestamp() - time.time()
    lead = min(rt.settings.token_renew_lead_seconds, max(remaining, 0) / 2)
    grace = rt.settings.token_renew_grace_seconds
    loop = asyncio.get_running_loop()

    def ask() -> None:
        data = {
            "expires_at": iso(expires_at),
            "disconnect_in": round(max(expires_at.timestamp() - time.time(), 0) + grace, 3),
        }
        rt.to_connection(connection.sid, ServerEvent.AUTH_EXPIRING, data)
        connection.renewal = loop.call_later(
            max(expires_at.timestamp() - time.time(), 0) + grace, expire
        )

    def expire() -> None:
        rt.spawn(end_connection(rt, connection.sid, "token_expired", "the access token expired"))

    connection.renewal = loop.call_later(max(remaining - lead, 0), ask)


async def end_connection(rt: Realtime, sid: str, code: str, message: str) -> None:
    """Tell a connection why, then close it."""
    rt.to_connection(sid, ServerEvent.SESSION_ENDED, {"code": code, "message": message})
    await rt.sio.disconnect(sid)


def refused_unavailable(metrics: Metrics) -> socketio.exceptions.ConnectionRefusedError:
    """The refusal for a connect that failed on our side: retryable, and logged (the
    client used to get no answer at all)."""
    log.exception("could not check a connection")
    metrics.socket_refused.labels(ServiceUnavailable.code).inc()
    return socketio.exceptions.ConnectionRefusedError(
        "the server could not check the connection; try again",
        {"code": ServiceUnavailable.code},
    )


class MainNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(self, rt: Realtime) -> None:
        super().__init__(NAMESPACE)
        self.rt = rt

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = correlation_id.set(sid)
        metrics = self.rt.metrics
        try:
            try:
                principal = await authenticate(self.rt, auth)
                await admit(self.rt, sid, NAMESPACE, principal)
                connection = Connection(sid, principal, self.rt.limits.connection_buckets())
                self.rt.connections.add(connection)
                self.rt.delivery.join(user_room_of(principal.user_id), sid)
                try:
                    await recheck(self.rt, auth)
                except BaseException:
                    self.rt.connections.remove(sid)
                    raise
            except AppError as exc:
                metrics.socket_refused.labels(exc.code).inc()
                log.info("connection refused: %s", exc.code)
                # python-socketio's exception (not the builtin of the same name):
                # the JS client sees err.message and err.data.code.
                raise socketio.exceptions.ConnectionRefusedError(
                    exc.message, {"code": exc.code}
                ) from exc
            except Exception as exc:  # the database failed: say so, do not leave it hanging
                raise refused_unavailable(metrics) from exc
            schedule_renewal(self.rt, connection)
            metrics.socket_connections.labels(NAMESPACE).inc()
            log.info("connected", extra={"user_id": str(principal.user_id)})
        finally:
            correlation_id.reset(token)

    async def on_disconnect(self, sid: str, reason: str | None = None) -> None:
        token = correlation_id.set(sid)
        try:
            connection = self.rt.connections.remove(sid)
            if connection is None:
                return
            self.rt.metrics.socket_connections.labels(NAMESPACE).dec()
            for document_id in joined_rooms(self.rt, sid):
                await leave_room(self.rt, connection, document_id)
            log.info("disconnected: %s", reason)
        finally:
            correlation_id.reset(token)

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in LIFECYCLE_EVENTS and ack_requested.get() is None:
            return await super().trigger_event(event, *args)
        # Everything else came in a client's event packet, a "disconnect" too:
        # it is a command like any other (and an unknown one).
        sid = args[0]
        connection = self.rt.connections.get(sid)
        if connection is None:  # a command racing its connection's end
            return None
        token = correlation_id.set(sid)
        try:
            result = await commands.run(Call(self.rt, connection), event, args[1:])
            if ack_requested.get() is False:
                self._unacked(sid, event, result)
            return result
        finally:
            correlation_id.reset(token)

    def start(
        self, sid: str, event: Any, args: tuple[Any, ...], ack: Callable[[Envelope], None] | None
    ) -> bool:
        """Start an ``at_once`` command (realtime/commands.py) in this turn, answered
        by ``ack`` (None: the client asked for none); False for any other event."""
        if not commands.at_once(event):
            return False
        connection = self.rt.connections.get(sid)
        if connection is None:  # a command racing its connection's end
            return True
        token = correlation_id.set(sid)
        try:
            commands.start(
                Call(self.rt, connection),
                event,
                args,
                ack or (lambda result: self._unacked(sid, event, result)),
            )
        finally:
            correlation_id.reset(token)
        return True

    def _unacked(self, sid: str, event: Any, result: Envelope) -> None:
        if not result["ok"]:
            # Nobody waits for an ack: say it with an event instead.
            self.rt.to_connection(
                sid, ServerEvent.ERROR, {**result["error"], "event": event_name(event)}
            )
