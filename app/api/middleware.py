"""Request id, access log, metrics and error mapping for every HTTP request."""

from __future__ import annotations

import logging
import math
import re
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from app.errors import AppError, PayloadTooLarge
from app.keys import METRICS
from app.logs import correlation_id

log = logging.getLogger(__name__)
access_log = logging.getLogger("app.access")

REQUEST_ID_HEADER = "X-Request-ID"
SOCKETIO_PATH = "/socket.io/"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

# aiohttp's own HTTP errors (unknown route, wrong method) in our error shape.
_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: PayloadTooLarge.code,
}


def error_response(status: int, code: str, message: str, details: object = None) -> web.Response:
    body: dict[str, object] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return web.json_response({"error": body}, status=status)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: correlation id, one access-log line, request metrics."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
    token = correlation_id.set(request_id)
    if request.path.startswith(SOCKETIO_PATH):
        # Long-polls and WebSockets last seconds to hours: as HTTP latency they
        # would drown the histogram. Socket.IO has metrics of its own.
        try:
            return await handler(request)
        finally:
            correlation_id.reset(token)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response
    finally:
        elapsed = time.perf_counter() - started
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics = request.app[METRICS]
        metrics.http_requests.labels(request.method, route, str(status)).inc()
        metrics.http_latency.labels(request.method, route).observe(elapsed)
        access_log.info(
            "%s %s %s %.1fms",
            request.method,
            request.path,
            status,
            elapsed * 1000,
            extra={"method": request.method, "route": route, "status": status},
        )
        correlation_id.reset(token)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as ``{"error": {code, message, details?}}`` with its status."""
    try:
        return await handler(request)
    except AppError as exc:
        response = error_response(exc.status, exc.code, exc.message, exc.details)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="api"'
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(math.ceil(exc.retry_after))
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error_response(exc.status, code, exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error")


CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-API-Key, X-Request-ID"
CORS_ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE"


def cors(origins: list[str]) -> Middleware:
    """CORS for the REST API, preflights included (Socket.IO has its own)."""
    allowed = frozenset(origins)

    @web.middleware
    async def handle(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        applies = (
            origin is not None
            and ("*" in allowed or origin in allowed)
            and not request.path.startswith(SOCKETIO_PATH)
        )
        if not applies:
            return await handler(request)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = CORS_ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        assert origin is not None
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = REQUEST_ID_HEADER
        response.headers["Vary"] = "Origin"
        return response

    return handle
