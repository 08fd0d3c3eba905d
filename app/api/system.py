"""Liveness, readiness, metrics and the API description."""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import version

from aiohttp import web
from sqlalchemy import text

from app.api.openapi import build_openapi
from app.api.schemas import Health, Readiness
from app.api.v1 import api
from app.keys import DRAINING, ENGINE, METRICS, REDIS
from app.metrics import CONTENT_TYPE_LATEST
from storage.migrate import is_up_to_date

log = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 2.0


async def health(request: web.Request) -> web.Response:
    """The process is alive and serving."""
    return web.json_response(Health(status="ok").model_dump())


async def ready(request: web.Request) -> web.Response:
    """Ready for traffic: database reachable and migrated, Redis reachable if configured."""
    app = request.app
    if app[DRAINING].is_set():
        body = Readiness(status="draining", checks={})
        return web.json_response(body.model_dump(), status=503)
    checks = {"database": "ok", "migrations": "ok"}
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            async with app[ENGINE].connect() as connection:
                await connection.execute(text("SELECT 1"))
            if not await is_up_to_date(app[ENGINE]):
                checks["migrations"] = "pending: run `python -m app migrate`"
    except Exception as exc:  # any failure means "not ready", with its reason
        log.warning("readiness: database check failed: %r", exc)
        checks["database"] = f"error: {type(exc).__name__}"
        checks["migrations"] = "unknown"
    redis = app.get(REDIS)
    if redis is None:
        checks["redis"] = "not configured"
    else:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                await redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            log.warning("readiness: redis check failed: %r", exc)
            checks["redis"] = f"error: {type(exc).__name__}"
    healthy = all(value in ("ok", "not configured") for value in checks.values())
    body = Readiness(status="ready" if healthy else "not_ready", checks=checks)
    return web.json_response(body.model_dump(), status=200 if healthy else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    response = web.Response(body=request.app[METRICS].render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def openapi(request: web.Request) -> web.Response:
    document = build_openapi(api, title="roomserver", version=version("roomserver"))
    return web.json_response(document)


def install(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/openapi.json", openapi)
