"""Bad HTTP input gets a clear 4xx with a stable code, and the server keeps serving.

Also the access-token refusals on REST, RS256 signing and an external identity provider.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from storage.models import GlobalRole
from tests.conftest import TEST_JWT_SECRET, AppFactory
from tests.helpers import PASSWORD, Api, User, b64url, claims, rsa_pems, unsigned_token

ME = "/api/v1/auth/me"
REGISTER = "/api/v1/auth/register"
JSON = {"Content-Type": "application/json"}


# --- helpers ---------------------------------------------------------------------------


async def still_serving(api: Api) -> None:
    """A good request right after a bad one succeeds."""
    name = f"ok{uuid.uuid4().hex[:10]}"
    created = await api.call(
        "POST", REGISTER, json={"username": name, "password": PASSWORD}, expect=201
    )
    assert created["username"] == name


def hs256_with_raw_key(payload: dict[str, Any], key: bytes) -> str:
    """HS256 by hand: PyJWT refuses a PEM key as an HMAC secret, an attacker does not."""
    signing_input = unsigned_token(payload, {"alg": "HS256", "typ": "JWT"})[:-1]
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def error_fields(error: dict[str, Any]) -> list[str]:
    return [detail["field"] for detail in error["details"]]


# --- malformed bodies ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body", [b'{"username": "alice", ', b"{'username': 'alice'}", b"", b"   \n"]
)
async def test_unparseable_or_empty_body_is_400_malformed_json(api: Api, body: bytes) -> None:
    await api.error("POST", REGISTER, data=body, headers=JSON, expect=400, code="malformed_json")
    await still_serving(api)


async def test_body_not_json_is_415(api: Api) -> None:
    body = json.dumps({"username": "alice", "password": PASSWORD})
    await api.error(
        "POST",
        REGISTER,
        data=body,
        headers={"Content-Type": "text/plain"},
        expect=415,
        code="unsupported_media_type",
    )
    await still_serving(api)


async def test_unknown_field_is_422_naming_the_field(api: Api) -> None:
    error = await api.error(
        "POST",
        REGISTER,
        json={"username": "alice", "password": PASSWORD, "is_admin": True},
        expect=422,
        code="validation_failed",
    )
    assert error["details"] == [
        {
            "field": "is_admin",
            "message": "Extra inputs are not permitted",
            "type": "extra_forbidden",
        }
    ]
    await still_serving(api)


async def test_number_for_username_is_422(api: Api) -> None:
    error = await api.error(
        "POST",
        REGISTER,
        json={"username": 12345, "password": PASSWORD},
        expect=422,
        code="validation_failed",
    )
    assert [(d["field"], d["type"]) for d in error["details"]] == [("username", "string_type")]
    await still_serving(api)


async def test_string_for_bool_in_user_update_is_422(api: Api) -> None:
    admin = await api.user("root", GlobalRole.ADMIN)
    bob = await api.user("bob")
    error = await api.error(
        "PATCH",
        f"/api/v1/users/{bob.id}",
        user=admin,
        json={"disabled": "true"},
        expect=422,
        code="validation_failed",
    )
    assert [(d["field"], d["type"]) for d in error["details"]] == [("disabled", "bool_type")]
    # Nothing changed: bob still signs in.
    assert (await api.call("GET", ME, user=bob))["disabled"] is False


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/documents", {"title": "t" * 201}, "title"),
        (REGISTER, {"username": "u" * 33, "password": PASSWORD}, "username"),
        (REGISTER, {"username": "alice", "password": "p" * 257}, "password"),
    ],
)
async def test_over_long_strings_are_422(
    api: Api, path: str, body: dict[str, Any], field: str
) -> None:
    owner = await api.user("owner")
    error = await api.error(
        "POST", path, user=owner, json=body, expect=422, code="validation_failed"
    )
    assert [(d["field"], d["type"]) for d in error["details"]] == [(field, "string_too_long")]
    await still_serving(api)


@pytest.mark.parametrize("password", ["hunter2", "Sup3r-S3cret-" + "z" * 250])
async def test_validation_error_never_echoes_the_password(
    client: TestClient[web.Request, web.Application], password: str
) -> None:
    response = await client.post(REGISTER, json={"username": "alice", "password": password})
    text = await response.text()
    assert response.status == 422, text
    assert json.loads(text)["error"]["details"][0]["field"] == "password"
    assert password not in text
    assert password[:7] not in text


async def test_body_over_max_body_bytes_is_413(start_app: AppFactory) -> None:
    client = await start_app(max_body_bytes=2048)
    api = Api(client)
    body = json.dumps({"username": "alice", "password": "p" * 4096}).encode()
    assert len(body) > 4096
    error = await api.error(
        "POST", REGISTER, data=body, headers=JSON, expect=413, code="payload_too_large"
    )
    assert "2048" in error["message"]
    await still_serving(api)


# --- routing and authentication --------------------------------------------------------


async def test_unknown_route_is_404_in_the_error_shape(
    api: Api, client: TestClient[web.Request, web.Application]
) -> None:
    response = await client.get("/api/v1/no-such-thing")
    assert response.status == 404
    assert response.content_type == "application/json"
    await api.error("GET", "/api/v1/no-such-thing", expect=404, code="not_found")
    await still_serving(api)


async def test_wrong_method_is_405(api: Api) -> None:
    await api.error("DELETE", "/api/v1/auth/login", expect=405, code="method_not_allowed")
    await api.error("PUT", "/health", expect=405, code="method_not_allowed")
    await still_serving(api)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic YWxpY2U6cGFzc3dvcmQ="}, {"Authorization": "Bearer   "}],
    ids=["missing", "basic", "empty-bearer"],
)
async def test_missing_or_non_bearer_auth_is_401(
    api: Api, client: TestClient[web.Request, web.Application], headers: dict[str, str]
) -> None:
    await api.error("GET", ME, headers=headers, expect=401, code="unauthorized")
    response = await client.get(ME, headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    await still_serving(api)


# --- X-Request-ID ----------------------------------------------------------------------


async def test_sane_request_id_is_echoed(client: TestClient[web.Request, web.Application]) -> None:
    for path, status in (("/health", 200), ("/nope", 404)):
        response = await client.get(path, headers={"X-Request-ID": "req-123_abc.DEF"})
        assert response.status == status
        assert response.headers["X-Request-ID"] == "req-123_abc.DEF"


@pytest.mark.parametrize("incoming", ["has spaces in it", "x" * 200, "a;b", "<script>"])
async def test_unsafe_request_id_is_replaced(
    client: TestClient[web.Request, web.Application], incoming: str
) -> None:
    response = await client.get("/health", headers={"X-Request-ID": incoming})
    assert response.status == 200
    echoed = response.headers["X-Request-ID"]
    assert echoed != incoming
    assert re.fullmatch(r"[0-9a-f]{32}", echoed), echoed


async def test_missing_request_id_is_generated(
    client: TestClient[web.Request, web.Application],
) -> None:
    first = (await client.get("/health")).headers["X-Request-ID"]
    second = (await client.get("/health")).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


# --- access tokens on REST -------------------------------------------------------------


def bad_token(kind: str, user: User) -> str:
    now = int(time.time())
    if kind == "expired":
        return jwt.encode(claims(user.id, iat=now - 3600, exp=now - 60), TEST_JWT_SECRET)
    if kind == "forged":
        return jwt.encode(claims(user.id), "another-secret-" + "y" * 40)
    if kind == "alg-none":
        return unsigned_token(claims(user.id), {"alg": "none", "typ": "JWT"})
    if kind == "wrong-aud":
        return jwt.encode(claims(user.id, aud="someone-else"), TEST_JWT_SECRET)
    if kind == "wrong-iss":
        return jwt.encode(claims(user.id, iss="https://evil.example"), TEST_JWT_SECRET)
    if kind == "refresh":
        return user.refresh_token
    assert kind == "garbage"
    return "not-a-jwt-at-all"


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("expired", "token_expired"),
        ("forged", "invalid_token"),
        ("alg-none", "invalid_token"),
        ("wrong-aud", "invalid_token"),
        ("wrong-iss", "invalid_token"),
        ("refresh", "invalid_token"),
        ("garbage", "invalid_token"),
    ],
)
async def test_bad_access_token_is_401(api: Api, kind: str, code: str) -> None:
    alice = await api.user("alice")
    # The same claims, correctly signed, are accepted: only ``kind`` is wrong.
    good = jwt.encode(claims(alice.id), TEST_JWT_SECRET)
    assert (await api.call("GET", ME, headers={"Authorization": f"Bearer {good}"}))["id"] == (
        alice.id
    )
    headers = {"Authorization": f"Bearer {bad_token(kind, alice)}"}
    await api.error("GET", ME, headers=headers, expect=401, code=code)
    assert (await api.call("GET", ME, user=alice))["username"] == "alice"


async def test_rs256_signing_and_algorithm_confusion(start_app: AppFactory) -> None:
    private_pem, public_pem = rsa_pems("local")
    api = Api(await start_app(jwt_secret=None, jwt_private_key=private_pem))
    alice = await api.user("alice")
    assert jwt.get_unverified_header(alice.access_token)["alg"] == "RS256"
    verified = jwt.decode(
        alice.access_token, public_pem, algorithms=["RS256"], audience="roomserver"
    )
    assert verified["sub"] == alice.id
    assert (await api.call("GET", ME, user=alice))["id"] == alice.id
    # HS256 keyed with the public key, which every client may know.
    confused = hs256_with_raw_key(claims(alice.id), public_pem.encode())
    await api.error(
        "GET",
        ME,
        headers={"Authorization": f"Bearer {confused}"},
        expect=401,
        code="invalid_token",
    )


async def test_external_identity_provider(start_app: AppFactory) -> None:
    """JWT_PUBLIC_KEY alone: no local login; the provider's tokens create users."""
    private_pem, public_pem = rsa_pems("provider")
    api = Api(await start_app(jwt_secret=None, jwt_public_key=public_pem))
    await api.error(
        "POST",
        "/api/v1/auth/login",
        json={"username": "erin", "password": PASSWORD},
        expect=403,
        code="forbidden",
    )
    now = int(time.time())
    provider_claims = {
        "sub": "ext-123",
        "preferred_username": "Erin",
        "iss": "roomserver",
        "aud": "roomserver",
        "iat": now,
        "exp": now + 600,
    }
    token = jwt.encode(provider_claims, private_pem, algorithm="RS256")
    headers = {"Authorization": f"Bearer {token}"}
    first = await api.call("GET", ME, headers=headers)
    assert first["username"].lower() == "erin"
    assert first["role"] == "user"
    assert first["disabled"] is False
    second = await api.call("GET", ME, headers=headers)
    assert second["id"] == first["id"]
    # Another key with the same claims is not the provider.
    other_private, _ = rsa_pems("impostor")
    impostor = jwt.encode(provider_claims, other_private, algorithm="RS256")
    await api.error(
        "GET",
        ME,
        headers={"Authorization": f"Bearer {impostor}"},
        expect=401,
        code="invalid_token",
    )
