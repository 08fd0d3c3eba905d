"""Test helpers: a thin REST client over the real app, and bounded waiting."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.keys import AUTH_SERVICE
from storage.models import GlobalRole

T = TypeVar("T")
PASSWORD = "correct horse battery"


@dataclass
class User:
    id: str
    username: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


class Api:
    """Calls the app's REST routes the way a client would."""

    def __init__(self, client: TestClient[web.Request, web.Application]) -> None:
        self.client = client

    async def call(
        self,
        method: str,
        path: str,
        *,
        user: User | None = None,
        json: Any = None,
        expect: int = 200,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Request ``path``; assert the status; return the JSON body (None for 204)."""
        all_headers = dict(user.headers if user else {})
        all_headers.update(headers or {})
        response = await self.client.request(method, path, json=json, headers=all_headers, **kwargs)
        body = await response.read()
        assert response.status == expect, (response.status, body[:500])
        if response.status == 204 or not body:
            return None
        return await response.json()

    async def error(self, method: str, path: str, *, expect: int, code: str, **kwargs: Any) -> Any:
        """Assert an error response with ``code``; return its error object."""
        body = await self.call(method, path, expect=expect, **kwargs)
        assert set(body) == {"error"}, body
        assert body["error"]["code"] == code, body
        assert body["error"]["message"], body
        return body["error"]

    async def user(self, username: str, role: GlobalRole = GlobalRole.USER) -> User:
        """Create a user (with ``role``) and sign them in."""
        if role is GlobalRole.USER:
            created = await self.call(
                "POST",
                "/api/v1/auth/register",
                json={"username": username, "password": PASSWORD},
                expect=201,
            )
            user_id = created["id"]
        else:
            auth = self.client.app[AUTH_SERVICE]
            user_id = str((await auth.create_user(username, PASSWORD, role)).id)
        tokens = await self.login(username)
        return User(user_id, username, tokens["access_token"], tokens["refresh_token"])

    async def login(self, username: str, password: str = PASSWORD, expect: int = 200) -> Any:
        return await self.call(
            "POST",
            "/api/v1/auth/login",
            json={"username": username, "password": password},
            expect=expect,
        )

    async def document(self, owner: User, title: str = "Plan") -> dict[str, Any]:
        body: dict[str, Any] = await self.call(
            "POST", "/api/v1/documents", user=owner, json={"title": title}, expect=201
        )
        return body

    async def room(self, member_role: str = "editor") -> tuple[User, User, dict[str, Any]]:
        """ann owns a document shared with ben as ``member_role``: (ann, ben, document)."""
        ann, ben = await self.user("ann"), await self.user("ben")
        doc = await self.document(ann, "Launch plan")
        await self.share(ann, doc["id"], ben, member_role)
        return ann, ben, doc

    async def share(self, owner: User, document_id: str, member: User, role: str) -> None:
        await self.call(
            "PUT",
            f"/api/v1/documents/{document_id}/members/{member.id}",
            user=owner,
            json={"role": role},
            expect=201,
        )


async def eventually(
    check: Callable[[], Awaitable[T] | T],
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 (a polling deadline, not a cancel scope)
    interval: float = 0.02,
) -> T:
    """Retry ``check`` until it returns without AssertionError, at most ``timeout`` s.

    ``check`` asserts (``equal``, ``truthy``, ``assert``). One that returns False instead
    would pass at its first call: that is refused."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result is False:
                raise TypeError("eventually's check returned False: assert (truthy, equal)")
            return result  # type: ignore[return-value]
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(interval)


def equal(actual: object, expected: object) -> None:
    """An assertion for ``eventually``."""
    assert actual == expected, (actual, expected)


def truthy(value: object) -> None:
    """An assertion for ``eventually``."""
    assert value, value


# --- tokens as an attacker or another issuer would make them ----------------------------


def claims(subject: str, **overrides: Any) -> dict[str, Any]:
    """The claims app/auth/tokens.py puts in an access token."""
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": subject,
        "iss": "roomserver",
        "aud": "roomserver",
        "iat": now,
        "exp": now + 600,
        "jti": str(uuid.uuid4()),
        "typ": "access",
    }
    values.update(overrides)
    return values


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(payload: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """``header.payload.`` (``alg: none`` by default), bypassing PyJWT's safety checks."""
    header = header or {"alg": "none", "typ": "JWT"}
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}."


@cache
def rsa_pems(name: str) -> tuple[str, str]:
    """A (private PEM, public PEM) pair, one per ``name`` per test run."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def arrivals(events: Iterable[Sequence[Any]]) -> list[str]:
    """The user ids in the ``joined`` of each ``presence:changed`` among ``events``
    (``(name, payload)`` pairs, a client's ``events``), in the order received."""
    return [
        user["user_id"]
        for name, payload in events
        if name == "presence:changed"
        for user in payload["joined"]
    ]


def departures(events: Iterable[Sequence[Any]]) -> list[str]:
    """The user ids in the ``left`` of each ``presence:changed`` among ``events``."""
    return [
        user_id
        for name, payload in events
        if name == "presence:changed"
        for user_id in payload["left"]
    ]
