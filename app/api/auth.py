"""Registration, login, token refresh and the caller's own account."""

from __future__ import annotations

from aiohttp import web

from app.api.schemas import Credentials, RefreshRequest, TokenResponse, UserOut
from app.api.v1 import api
from app.auth.principal import Principal
from app.auth.throttle import client_address
from app.errors import InvalidCredentials
from app.keys import AUTH_SERVICE, SETTINGS, SIGN_IN_THROTTLE, USER_SERVICE


def address_of(request: web.Request) -> str:
    """The client's address (``X-Forwarded-For`` counts only from ``TRUSTED_PROXIES``)."""
    return client_address(
        request.remote,
        request.headers.get("X-Forwarded-For"),
        request.app[SETTINGS].trusted_proxies,
    )


@api.route(
    "POST",
    "/auth/register",
    body=Credentials,
    response=UserOut,
    status=201,
    auth=False,
    errors=(403, 409, 422, 429, 503),
    tag="auth",
)
async def register(request: web.Request, body: Credentials) -> UserOut:
    """Create an account (role `user`). Limited per client address (429)."""
    request.app[SIGN_IN_THROTTLE].attempt_registration(address_of(request))
    user = await request.app[AUTH_SERVICE].register(body.username, body.password)
    return UserOut.model_validate(user)


@api.route(
    "POST",
    "/auth/login",
    body=Credentials,
    response=TokenResponse,
    auth=False,
    errors=(401, 403, 422, 429, 503),
    tag="auth",
)
async def login(request: web.Request, body: Credentials) -> TokenResponse:
    """Exchange a username and password for an access and a refresh token. Attempts
    are limited per client address and wrong passwords per username (429)."""
    async with request.app[SIGN_IN_THROTTLE].login(address_of(request), body.username) as wrong:
        try:
            pair = await request.app[AUTH_SERVICE].login(body.username, body.password)
        except InvalidCredentials:
            wrong()
            raise
    return TokenResponse.model_validate(pair)


@api.route(
    "POST",
    "/auth/refresh",
    body=RefreshRequest,
    response=TokenResponse,
    auth=False,
    errors=(401, 403, 422),
    tag="auth",
)
async def refresh(request: web.Request, body: RefreshRequest) -> TokenResponse:
    """Rotate a refresh token; presenting a spent one revokes its whole session."""
    pair = await request.app[AUTH_SERVICE].refresh(body.refresh_token)
    return TokenResponse.model_validate(pair)


@api.route(
    "POST",
    "/auth/logout",
    body=RefreshRequest,
    status=204,
    auth=False,
    errors=(401, 422),
    tag="auth",
)
async def logout(request: web.Request, body: RefreshRequest) -> None:
    """Revoke the session the refresh token belongs to."""
    await request.app[AUTH_SERVICE].logout(body.refresh_token)


@api.route("GET", "/auth/me", response=UserOut, errors=(401, 403), tag="auth")
async def me(request: web.Request, principal: Principal) -> UserOut:
    """The authenticated user."""
    return UserOut.model_validate(await request.app[USER_SERVICE].me(principal))
