"""User administration and service API keys (admins only)."""

from __future__ import annotations

from aiohttp import web

from app.api.routing import path_uuid
from app.api.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyOut,
    UserListQuery,
    UserOut,
    UserPage,
    UserUpdate,
)
from app.api.v1 import api
from app.auth.principal import Principal
from app.keys import USER_SERVICE


@api.route(
    "GET", "/users", query=UserListQuery, response=UserPage, errors=(401, 403, 422), tag="admin"
)
async def list_users(request: web.Request, principal: Principal, query: UserListQuery) -> UserPage:
    """All users by username (admin)."""
    users = await request.app[USER_SERVICE].list_users(
        principal, limit=query.limit + 1, after_username=query.cursor
    )
    page = users[: query.limit]
    next_cursor = page[-1].username if len(users) > query.limit else None
    return UserPage(items=[UserOut.model_validate(user) for user in page], next_cursor=next_cursor)


@api.route(
    "PATCH",
    "/users/{user_id}",
    body=UserUpdate,
    response=UserOut,
    errors=(401, 403, 404, 409, 422),
    tag="admin",
)
async def update_user(request: web.Request, principal: Principal, body: UserUpdate) -> UserOut:
    """Change a user's global role, or disable them (their tokens stop working) (admin)."""
    user = await request.app[USER_SERVICE].update_user(
        principal, path_uuid(request, "user_id"), role=body.role, disabled=body.disabled
    )
    return UserOut.model_validate(user)


@api.route(
    "POST",
    "/api-keys",
    body=ApiKeyCreate,
    response=ApiKeyCreated,
    status=201,
    errors=(401, 403, 404, 422),
    tag="admin",
)
async def create_api_key(
    request: web.Request, principal: Principal, body: ApiKeyCreate
) -> ApiKeyCreated:
    """Create a service API key acting as a user (admin); the key is shown only here."""
    stored, key = await request.app[USER_SERVICE].create_api_key(
        principal, name=body.name, user_id=body.user_id
    )
    return ApiKeyCreated(**ApiKeyOut.model_validate(stored).model_dump(), key=key)


@api.route("GET", "/api-keys", response=ApiKeyList, errors=(401, 403), tag="admin")
async def list_api_keys(request: web.Request, principal: Principal) -> ApiKeyList:
    """Every API key, without the keys themselves (admin)."""
    keys = await request.app[USER_SERVICE].list_api_keys(principal)
    return ApiKeyList(items=[ApiKeyOut.model_validate(key) for key in keys])


@api.route("DELETE", "/api-keys/{key_id}", status=204, errors=(401, 403, 404), tag="admin")
async def revoke_api_key(request: web.Request, principal: Principal) -> None:
    """Revoke an API key (admin)."""
    await request.app[USER_SERVICE].revoke_api_key(principal, path_uuid(request, "key_id"))
