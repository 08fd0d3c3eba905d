"""Operations endpoints: liveness, readiness, metrics, the OpenAPI document, and CORS."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.api.v1 import api as route_table
from app.keys import DRAINING
from app.logs import configure_logging
from tests.conftest import AppFactory
from tests.helpers import Api

Client = TestClient[web.Request, web.Application]
ORIGIN = "https://app.example"
CORS_HEADERS = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Expose-Headers",
)


async def metric_samples(client: Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of GET /metrics, keyed by (name, labels)."""
    response = await client.get("/metrics")
    assert response.status == 200
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` value anywhere in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


# --- liveness and readiness ------------------------------------------------------------


async def test_health(client: Client) -> None:
    response = await client.get("/health")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_ready_without_redis(client: Client) -> None:
    response = await client.get("/ready")
    assert response.status == 200
    assert await response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "redis": "not configured"},
    }


async def test_ready_with_redis(start_app: AppFactory, redis_url: str) -> None:
    client = await start_app(redis_url=redis_url)
    response = await client.get("/ready")
    assert response.status == 200
    assert await response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "redis": "ok"},
    }


async def test_ready_with_unreachable_redis_is_503(start_app: AppFactory) -> None:
    client = await start_app(redis_url="redis://127.0.0.1:1/0")
    response = await client.get("/ready")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["migrations"] == "ok"
    assert body["checks"]["redis"].startswith("error: "), body
    # Liveness is not readiness: the process still answers.
    assert (await client.get("/health")).status == 200


async def test_draining_is_not_ready(client: Client) -> None:
    client.app[DRAINING].set()
    response = await client.get("/ready")
    assert response.status == 503
    assert await response.json() == {"status": "draining", "checks": {}}
    assert (await client.get("/health")).status == 200


# --- metrics ---------------------------------------------------------------------------


async def test_metrics_use_route_templates(api: Api, client: Client) -> None:
    alice = await api.user("alice")
    document = await api.document(alice)
    await api.call("GET", f"/api/v1/documents/{document['id']}", user=alice)
    await api.call("GET", f"/api/v1/no-such-thing/{document['id']}", expect=404)

    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    assert document["id"] not in text
    assert "no-such-thing" not in text
    assert "http_request_duration_seconds_bucket{" in text
    assert "# TYPE socketio_connections gauge" in text

    samples = await metric_samples(client)
    template = "/api/v1/documents/{document_id}"
    get_one = frozenset({("method", "GET"), ("route", template), ("status", "200")})
    assert samples[("http_requests_total", get_one)] == 1.0
    created = frozenset({("method", "POST"), ("route", "/api/v1/documents"), ("status", "201")})
    assert samples[("http_requests_total", created)] == 1.0
    unmatched = frozenset({("method", "GET"), ("route", "unmatched"), ("status", "404")})
    assert samples[("http_requests_total", unmatched)] == 1.0
    latency = frozenset({("method", "GET"), ("route", template)})
    assert samples[("http_request_duration_seconds_count", latency)] == 1.0


# --- OpenAPI ---------------------------------------------------------------------------


async def test_openapi_document(client: Client) -> None:
    response = await client.get("/api/v1/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "roomserver"
    assert document["info"]["version"]

    described = {
        (path, method.upper()) for path, item in document["paths"].items() for method in item
    }
    declared = {(route_table.prefix + e.path, e.method) for e in route_table.endpoints}
    registered = {
        (route.resource.canonical, route.method)
        for route in client.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/v1/")
        and route.method != "HEAD"
        # The document describes the API, not itself.
        and route.resource.canonical != "/api/v1/openapi.json"
    }
    assert described == declared == registered
    assert ("/api/v1/documents/{document_id}", "GET") in described

    operation_ids = [
        op["operationId"] for item in document["paths"].values() for op in item.values()
    ]
    assert len(operation_ids) == len(set(operation_ids))

    schemas = document["components"]["schemas"]
    all_refs = list(refs(document))
    assert all_refs
    for ref in all_refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref

    body = document["paths"]["/api/v1/auth/register"]["post"]["requestBody"]
    body_ref = body["content"]["application/json"]["schema"]["$ref"]
    credentials = schemas[body_ref.removeprefix("#/components/schemas/")]
    assert credentials["additionalProperties"] is False
    assert set(credentials["required"]) == {"username", "password"}

    me = document["paths"]["/api/v1/auth/me"]["get"]
    assert me["security"]
    assert "401" in me["responses"]
    assert "security" not in document["paths"]["/api/v1/auth/login"]["post"]


# --- CORS ------------------------------------------------------------------------------


async def test_cors_preflight_from_allowed_origin(start_app: AppFactory) -> None:
    client = await start_app(cors_origins=[ORIGIN])
    response = await client.options(
        "/api/v1/documents",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    allowed = {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {"authorization", "content-type"} <= allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Origin" in response.headers["Vary"]


async def test_cors_on_actual_responses_including_errors(start_app: AppFactory) -> None:
    """A browser can read error bodies (and the request id) from an allowed origin."""
    client = await start_app(cors_origins=[ORIGIN])
    response = await client.get("/api/v1/documents", headers={"Origin": ORIGIN})
    assert response.status == 401
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]


async def test_cors_refuses_other_origins(start_app: AppFactory) -> None:
    client = await start_app(cors_origins=[ORIGIN])
    preflight = await client.options(
        "/api/v1/documents",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status != 204
    plain = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert plain.status == 200
    for response in (preflight, plain):
        for header in CORS_HEADERS:
            assert header not in response.headers


async def test_no_cors_headers_without_cors_origins(client: Client) -> None:
    preflight = await client.options(
        "/api/v1/documents",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status != 204
    plain = await client.get("/health", headers={"Origin": ORIGIN})
    assert plain.status == 200
    for response in (preflight, plain):
        for header in CORS_HEADERS:
            assert header not in response.headers


def test_a_text_log_line_cannot_be_forged(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11, finding 10: a path with %0a or an event name with a newline wrote a
    line of its own into text logs."""
    configure_logging("INFO", "text")
    try:
        chosen = "/api/v1/x\n2026-12-04 00:00:00,000 ERROR   app [-] forged\x1b[2J"
        logging.getLogger("app.test").warning("unknown route %s", chosen)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("app.test").exception("failed at %s", "a\rb")
    finally:
        configure_logging("WARNING", "text")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(
        "unknown route /api/v1/x\\n2026-12-04 00:00:00,000 ERROR   app [-] forged\\x1b[2J"
    )
    assert lines[1].endswith("failed at a\\rb")
    assert lines[2] == "Traceback (most recent call last):"  # ours keeps its lines
    assert not any(line.startswith("2026-12-04 00:00:00,000") for line in lines)
