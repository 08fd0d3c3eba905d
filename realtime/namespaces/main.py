"""The default namespace ``/``: authenticated connections (rooms and chat come next)."""

from __future__ import annotations

import logging
from typing import Any

import socketio
from aiohttp import web

from app.auth.principal import Principal
from app.errors import AppError, Unauthorized
from app.keys import AUTH_SERVICE, METRICS
from app.logs import correlation_id

log = logging.getLogger(__name__)

NAMESPACE = "/"
SESSION_PRINCIPAL = "principal"


async def authenticate(app: web.Application, auth: Any) -> Principal:
    """The principal for a handshake's ``auth: {"token": ...}`` payload."""
    token = auth.get("token") if isinstance(auth, dict) else None
    if not isinstance(token, str) or not token:
        raise Unauthorized("send the access token as auth: {token: '...'}")
    return await app[AUTH_SERVICE].authenticate_token(token)


class MainNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(self, app: web.Application) -> None:
        super().__init__(NAMESPACE)
        self.app = app

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = correlation_id.set(sid)
        metrics = self.app[METRICS]
        try:
            try:
                principal = await authenticate(self.app, auth)
            except AppError as exc:
                metrics.socket_refused.labels(exc.code).inc()
                log.info("connection refused: %s", exc.code)
                # The JS client sees err.message and err.data.code.
                raise socketio.exceptions.ConnectionRefusedError(
                    exc.message, {"code": exc.code}
                ) from exc
            await self.save_session(sid, {SESSION_PRINCIPAL: principal})
            metrics.socket_connections.labels(NAMESPACE).inc()
            log.info("connected", extra={"user_id": str(principal.user_id)})
        finally:
            correlation_id.reset(token)

    async def on_disconnect(self, sid: str, reason: str | None = None) -> None:
        session = await self.get_session(sid)
        if SESSION_PRINCIPAL in session:
            self.app[METRICS].socket_connections.labels(NAMESPACE).dec()
