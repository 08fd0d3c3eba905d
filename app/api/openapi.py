"""OpenAPI 3.1 document built from the route table's pydantic models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from app.api.routing import Api, Endpoint
from app.api.schemas import ErrorBody

REF = "#/components/schemas/{model}"
ERROR_TEXT = {
    400: "Malformed request (malformed_json, bad_request)",
    401: "Missing, invalid, expired or revoked credentials",
    403: "Not allowed (forbidden, user_disabled)",
    404: "No such resource, or not yours to see",
    409: "Conflicts with the current state",
    413: "Body larger than MAX_BODY_BYTES",
    415: "Body is not application/json",
    422: "Body or query does not match the schema; details name each field",
    429: "Rate limited; details.retry_after in seconds",
}


def build_openapi(api: Api, *, title: str, version: str) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for endpoint in api.endpoints:
        if endpoint.body is not None:
            models.append((endpoint.body, "validation"))
        if endpoint.response is not None:
            models.append((endpoint.response, "serialization"))
    refs, schema = models_json_schema(models, ref_template=REF)

    paths: dict[str, dict[str, Any]] = {}
    for endpoint in api.endpoints:
        operation = _operation(endpoint, refs)
        paths.setdefault(api.prefix + endpoint.path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def _operation(
    endpoint: Endpoint,
    refs: Mapping[tuple[Any, JsonSchemaMode], dict[str, Any]],
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": endpoint.summary,
        "operationId": endpoint.handler.__name__,
        "tags": [endpoint.tag] if endpoint.tag else [],
    }
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in endpoint.path_params
    ]
    if endpoint.query is not None:
        query_schema = endpoint.query.model_json_schema(ref_template=REF)
        required = set(query_schema.get("required", []))
        for name, prop in query_schema.get("properties", {}).items():
            parameters.append(
                {"name": name, "in": "query", "required": name in required, "schema": prop}
            )
    if parameters:
        operation["parameters"] = parameters
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(endpoint.body, "validation")]}},
        }
    responses: dict[str, Any] = {}
    if endpoint.response is not None:
        json_body = {"schema": refs[(endpoint.response, "serialization")]}
        content = {"application/json": json_body, **endpoint.media}
        responses[str(endpoint.status)] = {"description": "OK", "content": content}
    else:
        responses[str(endpoint.status)] = {"description": "No content"}
    error_ref = refs[(ErrorBody, "serialization")]
    for status in endpoint.also:
        responses[str(status)] = responses[str(endpoint.status)]
    statuses = set(endpoint.errors) | ({400, 413, 415, 422} if endpoint.body else set())
    if endpoint.auth:
        statuses |= {401, 403}  # missing or bad credentials; a disabled user
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": ERROR_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": error_ref}},
        }
    operation["responses"] = responses
    if endpoint.auth:
        operation["security"] = [{"bearer": []}, {"apiKey": []}]
    return operation
