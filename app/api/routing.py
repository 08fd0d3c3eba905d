"""A route table whose declarations drive both request parsing and the OpenAPI document.

A handler is declared with its body, query and response models::

    @api.route("POST", "/documents", body=CreateDocument, response=DocumentOut, status=201)
    async def create_document(request, principal, body): ...

The wrapper authenticates (unless ``auth=False``), parses and validates the body and
query (``extra="forbid"``, strict types), and serialises the returned model.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from app.auth.principal import Principal
from app.errors import (
    MalformedJSON,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from app.keys import AUTH_SERVICE, SETTINGS

Handler = Callable[..., Awaitable[Any]]
M = TypeVar("M", bound=BaseModel)
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]

_PATH_PARAM = re.compile(r"{(\w+)}")


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: Method
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    auth: bool
    errors: tuple[int, ...]
    tag: str
    also: tuple[int, ...]  # other success statuses with the same body
    media: Mapping[str, dict[str, Any]]  # other media types of the success answer

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)


@dataclass
class Api:
    prefix: str
    endpoints: list[Endpoint] = field(default_factory=list)

    def route(
        self,
        method: Method,
        path: str,
        *,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        auth: bool = True,
        errors: tuple[int, ...] = (),
        tag: str = "",
        also: tuple[int, ...] = (),
        media: Mapping[str, dict[str, Any]] | None = None,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            summary = (handler.__doc__ or handler.__name__).strip().splitlines()[0]
            self.endpoints.append(
                Endpoint(
                    method,
                    path,
                    handler,
                    summary,
                    body,
                    query,
                    response,
                    status,
                    auth,
                    errors,
                    tag,
                    also,
                    media or {},
                )
            )
            return handler

        return register

    def install(self, app: web.Application) -> None:
        for endpoint in self.endpoints:
            app.router.add_route(endpoint.method, self.prefix + endpoint.path, _wrap(endpoint))


def _wrap(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        kwargs: dict[str, Any] = {}
        if endpoint.auth:
            kwargs["principal"] = await authenticate(request)
        if endpoint.body is not None:
            kwargs["body"] = await parse_body(request, endpoint.body)
        if endpoint.query is not None:
            kwargs["query"] = parse_query(request, endpoint.query)
        result = await endpoint.handler(request, **kwargs)
        if isinstance(result, web.StreamResponse):
            return result
        if result is None:
            return web.Response(status=204)
        assert isinstance(result, BaseModel)
        return web.Response(
            body=result.model_dump_json(),
            status=endpoint.status,
            content_type="application/json",
        )

    handle.__name__ = endpoint.handler.__name__
    return handle


async def authenticate(request: web.Request) -> Principal:
    """The caller's principal from ``Authorization: Bearer`` or ``X-API-Key``."""
    auth = request.app[AUTH_SERVICE]
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("use 'Authorization: Bearer <access token>'")
        return await auth.authenticate_token(token.strip())
    api_key = request.headers.get("X-API-Key")
    if api_key:
        return await auth.authenticate_api_key(api_key)
    raise Unauthorized()


async def parse_body(request: web.Request, model: type[M]) -> M:
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        limit = request.app[SETTINGS].max_body_bytes
        raise PayloadTooLarge(f"the body is larger than {limit} bytes") from exc
    if not raw.strip():
        raise MalformedJSON("the body is empty")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise MalformedJSON() from exc
        raise ValidationFailed.of(exc) from exc


def parse_query(request: web.Request, model: type[M]) -> M:
    query = request.query
    # A key given more than once goes in as a list, refused like any wrong type,
    # rather than read as its first value.
    values = {key: query.getall(key) if len(query.getall(key)) > 1 else query[key] for key in query}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ValidationFailed.of(exc) from exc


def path_uuid(request: web.Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError as exc:
        raise NotFound(f"no such {name.removesuffix('_id')}") from exc
