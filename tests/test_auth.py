"""Registration, login, refresh rotation with reuse detection, logout."""

from __future__ import annotations

import asyncio
import logging

import jwt
import pytest
from sqlalchemy import select

from app.auth.passwords import argon2id
from app.keys import SESSIONS
from storage.models import User
from tests.conftest import AppFactory
from tests.helpers import PASSWORD, Api


async def test_register_returns_the_user_without_secrets(api: Api) -> None:
    body = await api.call(
        "POST",
        "/api/v1/auth/register",
        json={"username": "  Bob.Smith ", "password": PASSWORD},
        expect=201,
    )
    assert body["username"] == "bob.smith"
    assert body["role"] == "user"
    assert body["disabled"] is False
    assert "password" not in str(body) and "hash" not in str(body)


async def test_duplicate_username_is_409_in_any_case(api: Api) -> None:
    await api.user("carol")
    await api.error(
        "POST",
        "/api/v1/auth/register",
        json={"username": "CAROL", "password": PASSWORD},
        expect=409,
        code="username_taken",
    )


async def test_registration_can_be_closed(start_app: AppFactory) -> None:
    api = Api(await start_app(allow_registration=False))
    await api.error(
        "POST",
        "/api/v1/auth/register",
        json={"username": "dave", "password": PASSWORD},
        expect=403,
        code="forbidden",
    )


async def test_login_issues_pinned_well_formed_tokens(api: Api) -> None:
    await api.user("erin")
    tokens = await api.login("Erin")
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header["alg"] == "HS256"
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["typ"] == "access"
    assert claims["iss"] == "roomserver" and claims["aud"] == "roomserver"
    assert 899 < claims["exp"] - claims["iat"] <= 900


async def test_wrong_password_and_unknown_user_look_the_same(api: Api) -> None:
    await api.user("frank")
    wrong = await api.call(
        "POST",
        "/api/v1/auth/login",
        json={"username": "frank", "password": "not the password"},
        expect=401,
    )
    unknown = await api.call(
        "POST",
        "/api/v1/auth/login",
        json={"username": "nobody", "password": "not the password"},
        expect=401,
    )
    assert (
        wrong
        == unknown
        == {"error": {"code": "invalid_credentials", "message": "wrong username or password"}}
    )


async def test_refresh_rotates_and_the_new_pair_works(api: Api) -> None:
    grace = await api.user("grace")
    rotated = await api.call(
        "POST", "/api/v1/auth/refresh", json={"refresh_token": grace.refresh_token}
    )
    assert rotated["refresh_token"] != grace.refresh_token
    me = await api.call(
        "GET",
        "/api/v1/auth/me",
        headers={"Authorization": f"Bearer {rotated['access_token']}"},
    )
    assert me["username"] == "grace"
    again = await api.call(
        "POST", "/api/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]}
    )
    assert again["refresh_token"] != rotated["refresh_token"]


async def test_reusing_a_spent_refresh_token_revokes_the_family(api: Api) -> None:
    """A replayed refresh token means it leaked: every token of that login dies."""
    heidi = await api.user("heidi")
    other_login = await api.login("heidi")  # a second session, which must survive
    rotated = await api.call(
        "POST", "/api/v1/auth/refresh", json={"refresh_token": heidi.refresh_token}
    )
    await api.error(
        "POST",
        "/api/v1/auth/refresh",
        json={"refresh_token": heidi.refresh_token},
        expect=401,
        code="token_reused",
    )
    # The legitimate holder's newer token of the same family is revoked too.
    await api.error(
        "POST",
        "/api/v1/auth/refresh",
        json={"refresh_token": rotated["refresh_token"]},
        expect=401,
        code="invalid_token",
    )
    await api.call(
        "POST", "/api/v1/auth/refresh", json={"refresh_token": other_login["refresh_token"]}
    )


async def test_concurrent_refresh_with_one_token_succeeds_once(api: Api) -> None:
    ivan = await api.user("ivan")

    async def attempt() -> int:
        response = await api.client.post(
            "/api/v1/auth/refresh", json={"refresh_token": ivan.refresh_token}
        )
        await response.read()
        return response.status

    statuses = sorted(await asyncio.gather(*(attempt() for _ in range(4))))
    assert statuses[0] == 200
    assert statuses[1:] == [401, 401, 401]


async def test_logout_revokes_the_session(api: Api) -> None:
    judy = await api.user("judy")
    await api.call(
        "POST", "/api/v1/auth/logout", json={"refresh_token": judy.refresh_token}, expect=204
    )
    await api.error(
        "POST",
        "/api/v1/auth/refresh",
        json={"refresh_token": judy.refresh_token},
        expect=401,
        code="invalid_token",
    )


async def test_an_access_token_is_not_a_refresh_token(api: Api) -> None:
    kim = await api.user("kim")
    await api.error(
        "POST",
        "/api/v1/auth/refresh",
        json={"refresh_token": kim.access_token},
        expect=401,
        code="invalid_token",
    )


async def test_me_reports_the_current_role(api: Api) -> None:
    leo = await api.user("leo")
    me = await api.call("GET", "/api/v1/auth/me", user=leo)
    assert set(me) == {"id", "username", "role", "disabled", "created_at"}
    assert me["id"] == leo.id


async def stored_hash(api: Api, username: str) -> str:
    async with api.client.app[SESSIONS]() as session:
        found = await session.scalar(select(User.password_hash).where(User.username == username))
    assert found is not None
    return found


async def test_a_hash_of_other_parameters_is_made_again_at_sign_in(start_app: AppFactory) -> None:
    before = Api(await start_app(password_hash_time_cost=1, password_hash_memory_kib=32))
    await before.user("dora")
    assert "$m=32,t=1,p=4$" in await stored_hash(before, "dora")
    # The same database, served with other parameters: the old hash still signs in...
    after = Api(await start_app(password_hash_time_cost=2, password_hash_memory_kib=64))
    await after.login("dora")
    # ...and is replaced by one of the new parameters, which signs in too.
    assert "$m=64,t=2,p=4$" in await stored_hash(after, "dora")
    await after.login("dora")
    await after.login("dora", "not the password", expect=401)


def test_a_hash_cheaper_than_owasp_advises_is_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app.auth.passwords"):
        argon2id(time_cost=3, memory_kib=65536)  # the defaults
        argon2id(time_cost=2, memory_kib=19 * 1024)  # OWASP's second option
        assert not caplog.records
        argon2id(time_cost=1, memory_kib=32)
    [warning] = caplog.records
    assert "less than OWASP advises" in warning.getMessage()
