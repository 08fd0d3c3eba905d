"""Admin routes: user listing, roles, disabling, and service API keys."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import func, update

from app.keys import SESSIONS
from storage.models import GlobalRole
from storage.models import User as UserRow
from tests.helpers import Api, User

USERS = "/api/v1/users"
KEYS = "/api/v1/api-keys"
ME = "/api/v1/auth/me"


def user_path(user_id: str) -> str:
    return f"{USERS}/{user_id}"


def key_header(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def patch_user(api: Api, admin: User, target: User, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = await api.call("PATCH", user_path(target.id), user=admin, json=changes)
    return body


async def relogin(api: Api, user: User) -> User:
    """The same user with a fresh pair of tokens."""
    tokens = await api.login(user.username)
    return User(user.id, user.username, tokens["access_token"], tokens["refresh_token"])


async def refresh(api: Api, user: User, *, expect: int) -> Any:
    return await api.call(
        "POST", "/api/v1/auth/refresh", json={"refresh_token": user.refresh_token}, expect=expect
    )


async def new_key(api: Api, admin: User, name: str = "ci", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = await api.call(
        "POST", KEYS, user=admin, json={"name": name, **extra}, expect=201
    )
    return body


# --- listing ----------------------------------------------------------------------------


async def test_list_users_is_admin_only(api: Api) -> None:
    await api.user("root", GlobalRole.ADMIN)
    bob = await api.user("bob")
    await api.error("GET", USERS, expect=401, code="unauthorized")
    await api.error("GET", USERS, user=bob, expect=403, code="forbidden")


async def test_list_users_pages_by_username(api: Api) -> None:
    root = await api.user("root", GlobalRole.ADMIN)
    for name in ("Carol", "alice", "dave", "bob"):
        await api.user(name)
    seen: list[str] = []
    cursors: list[str | None] = []
    cursor: str | None = None
    for _ in range(3):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await api.call("GET", USERS, user=root, params=params)
        seen += [item["username"] for item in page["items"]]
        cursor = page["next_cursor"]
        cursors.append(cursor)
    assert seen == ["alice", "bob", "carol", "dave", "root"]
    assert cursors == ["bob", "dave", None]
    full = await api.call("GET", USERS, user=root)
    assert full["next_cursor"] is None
    by_name = {item["username"]: item for item in full["items"]}
    assert set(by_name["root"]) == {"id", "username", "role", "disabled", "created_at"}
    assert (by_name["root"]["id"], by_name["root"]["role"]) == (root.id, "admin")
    assert (by_name["bob"]["role"], by_name["bob"]["disabled"]) == ("user", False)


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "101"}, {"limit": "abc"}, {"sort": "id"}, {"cursor": "x" * 65}],
)
async def test_list_users_rejects_bad_queries(api: Api, params: dict[str, str]) -> None:
    root = await api.user("root", GlobalRole.ADMIN)
    await api.error("GET", USERS, user=root, params=params, expect=422, code="validation_failed")


# --- roles ------------------------------------------------------------------------------


async def test_role_changes_apply_to_existing_tokens(api: Api) -> None:
    """Roles are read per request: a promotion or demotion needs no new login."""
    root, bob = await api.user("root", GlobalRole.ADMIN), await api.user("bob")
    body = await patch_user(api, root, bob, role="power")
    assert (body["id"], body["role"], body["disabled"]) == (bob.id, "power", False)
    assert (await api.call("GET", ME, user=bob))["role"] == "power"
    await patch_user(api, root, bob, role="admin")
    await api.call("GET", USERS, user=bob)
    await patch_user(api, bob, root, role="user")
    await api.error("GET", USERS, user=root, expect=403, code="forbidden")


async def test_last_active_admin_cannot_be_demoted_or_disabled(api: Api) -> None:
    root = await api.user("root", GlobalRole.ADMIN)
    other = await api.user("other", GlobalRole.ADMIN)
    await patch_user(api, root, other, disabled=True)  # a disabled admin does not count
    for changes in ({"role": "user"}, {"role": "guest"}, {"disabled": True}):
        await api.error(
            "PATCH", user_path(root.id), user=root, json=changes, expect=409, code="conflict"
        )
    me = await api.call("GET", ME, user=root)
    assert (me["role"], me["disabled"]) == ("admin", False)
    # With a second active admin, demoting yourself is fine.
    await patch_user(api, root, other, disabled=False)
    other = await relogin(api, other)
    assert (await patch_user(api, root, root, role="user"))["role"] == "user"
    await api.error(
        "PATCH", user_path(other.id), user=other, json={"role": "user"}, expect=409, code="conflict"
    )


async def test_update_user_errors(api: Api) -> None:
    root, bob = await api.user("root", GlobalRole.ADMIN), await api.user("bob")
    cases: list[tuple[str, Any, int, str]] = [
        (str(uuid.uuid4()), {"role": "user"}, 404, "not_found"),
        ("not-a-uuid", {"role": "user"}, 404, "not_found"),
        (bob.id, {"role": "superuser"}, 422, "validation_failed"),
        (bob.id, {"disabled": "yes"}, 422, "validation_failed"),
        (bob.id, {"username": "robert"}, 422, "validation_failed"),
    ]
    for user_id, payload, status, code in cases:
        await api.error(
            "PATCH", user_path(user_id), user=root, json=payload, expect=status, code=code
        )
    await api.error(
        "PATCH", user_path(root.id), user=bob, json={"role": "user"}, expect=403, code="forbidden"
    )
    await api.error(
        "PATCH", user_path(bob.id), json={"role": "admin"}, expect=401, code="unauthorized"
    )
    me = await api.call("GET", ME, user=bob)
    assert (me["role"], me["disabled"]) == ("user", False)


# --- disabling --------------------------------------------------------------------------


async def test_disabling_locks_a_user_out(api: Api) -> None:
    root, bob = await api.user("root", GlobalRole.ADMIN), await api.user("bob")
    body = await patch_user(api, root, bob, disabled=True)
    assert (body["id"], body["disabled"]) == (bob.id, True)
    await api.error("GET", ME, user=bob, expect=403, code="user_disabled")
    # The refresh session was revoked with the account, before the disabled check.
    body = await refresh(api, bob, expect=401)
    assert body["error"]["code"] == "invalid_token"
    body = await api.login("bob", expect=403)
    assert body["error"]["code"] == "user_disabled"
    body = await api.login("bob", "wrong password", expect=401)
    assert body["error"]["code"] == "invalid_credentials"
    listed = await api.call("GET", USERS, user=root)
    assert {item["username"]: item["disabled"] for item in listed["items"]}["bob"] is True


async def test_reenabling_allows_login_but_old_tokens_stay_revoked(api: Api) -> None:
    """Tokens issued before the account was disabled never work again."""
    root, bob = await api.user("root", GlobalRole.ADMIN), await api.user("bob")
    await patch_user(api, root, bob, disabled=True)
    assert (await patch_user(api, root, bob, disabled=False))["disabled"] is False
    fresh = await relogin(api, bob)
    assert (await api.call("GET", ME, user=fresh))["username"] == "bob"
    assert set(await refresh(api, fresh, expect=200)) >= {"access_token", "refresh_token"}
    body = await refresh(api, bob, expect=401)
    assert body["error"]["code"] == "invalid_token"
    await api.error("GET", ME, user=bob, expect=401, code="unauthorized")


# --- API keys ---------------------------------------------------------------------------


async def test_api_key_is_shown_once_and_authenticates(api: Api) -> None:
    root, bob = await api.user("root", GlobalRole.ADMIN), await api.user("bob")
    created = await new_key(api, root, " deploy bot ", user_id=bob.id)
    assert set(created) == {
        "id",
        "user_id",
        "name",
        "prefix",
        "created_at",
        "last_used_at",
        "revoked_at",
        "key",
    }
    assert created["key"].startswith("rsk_")
    assert created["prefix"] == created["key"][:12]
    assert (created["user_id"], created["name"]) == (bob.id, "deploy bot")
    assert (created["last_used_at"], created["revoked_at"]) == (None, None)
    me = await api.call("GET", ME, headers=key_header(created["key"]))
    assert (me["id"], me["username"]) == (bob.id, "bob")
    own = await new_key(api, root, "mine")
    assert own["user_id"] == root.id
    assert own["key"] != created["key"]
    assert (await api.call("GET", ME, headers=key_header(own["key"])))["username"] == "root"
    listed = (await api.call("GET", KEYS, user=root))["items"]
    assert [item["id"] for item in listed] == [created["id"], own["id"]]
    assert all("key" not in item for item in listed)
    assert listed[0]["prefix"] == created["prefix"]
    assert listed[0]["last_used_at"] is not None


async def test_revoked_key_is_refused(api: Api) -> None:
    root = await api.user("root", GlobalRole.ADMIN)
    created = await new_key(api, root)
    path = f"{KEYS}/{created['id']}"
    assert await api.call("DELETE", path, user=root, expect=204) is None
    await api.error("GET", ME, headers=key_header(created["key"]), expect=401, code="invalid_token")
    await api.error("DELETE", path, user=root, expect=404, code="not_found")
    listed = (await api.call("GET", KEYS, user=root))["items"]
    assert listed[0]["revoked_at"] is not None


async def test_key_of_a_disabled_user_is_refused(api: Api) -> None:
    root, bob = await api.user("root", GlobalRole.ADMIN), await api.user("bob")
    created = await new_key(api, root, user_id=bob.id)
    await patch_user(api, root, bob, disabled=True)
    await api.error("GET", ME, headers=key_header(created["key"]), expect=403, code="user_disabled")


async def test_key_of_a_demoted_admin_loses_admin_rights(api: Api) -> None:
    root, other = (
        await api.user("root", GlobalRole.ADMIN),
        await api.user("other", GlobalRole.ADMIN),
    )
    created = await new_key(api, other)
    await api.call("GET", USERS, headers=key_header(created["key"]))
    await patch_user(api, root, other, role="user")
    await api.error("GET", USERS, headers=key_header(created["key"]), expect=403, code="forbidden")


@pytest.mark.parametrize("key", ["rsk_" + "A" * 43, "not-a-key", "rsk_"])
async def test_unknown_key_is_refused(api: Api, key: str) -> None:
    root = await api.user("root", GlobalRole.ADMIN)
    await new_key(api, root)
    await api.error("GET", ME, headers=key_header(key), expect=401, code="invalid_token")


async def test_api_keys_are_admin_only(api: Api) -> None:
    root, bob = await api.user("root", GlobalRole.ADMIN), await api.user("bob")
    created = await new_key(api, root)
    path = f"{KEYS}/{created['id']}"
    await api.error("POST", KEYS, user=bob, json={"name": "x"}, expect=403, code="forbidden")
    await api.error("GET", KEYS, user=bob, expect=403, code="forbidden")
    await api.error("DELETE", path, user=bob, expect=403, code="forbidden")
    await api.error("POST", KEYS, json={"name": "x"}, expect=401, code="unauthorized")
    listed = (await api.call("GET", KEYS, user=root))["items"]
    assert [(item["id"], item["revoked_at"]) for item in listed] == [(created["id"], None)]


async def test_create_key_errors(api: Api) -> None:
    root = await api.user("root", GlobalRole.ADMIN)
    cases: list[tuple[Any, int, str]] = [
        ({"name": "x", "user_id": str(uuid.uuid4())}, 404, "not_found"),
        ({"name": "   "}, 422, "validation_failed"),
        ({"name": "x" * 101}, 422, "validation_failed"),
        ({"name": "x", "user_id": "bob"}, 422, "validation_failed"),
        ({"name": "x", "scope": "all"}, 422, "validation_failed"),
    ]
    for payload, status, code in cases:
        await api.error("POST", KEYS, user=root, json=payload, expect=status, code=code)
    await api.error("DELETE", f"{KEYS}/{uuid.uuid4()}", user=root, expect=404, code="not_found")
    assert (await api.call("GET", KEYS, user=root))["items"] == []


async def test_a_made_up_key_is_refused_while_a_writer_holds_the_database(api: Api) -> None:
    """Issue 11, finding 13: the check took SQLite's write lock, so bogus keys queued
    behind every writer (and an unknown key needs no write at all)."""
    root = await api.user("root", GlobalRole.ADMIN)
    real = (await new_key(api, root, "ci"))["key"]
    async with api.client.app[SESSIONS].begin() as session:
        await session.execute(update(UserRow).values(updated_at=func.now()))  # holds the lock
        refused = api.error(
            "GET", ME, expect=401, code="invalid_token", headers=key_header("rsk_" + "x" * 43)
        )
        await asyncio.wait_for(refused, 10)  # before the writer commits
    assert (await api.call("GET", ME, headers=key_header(real)))["username"] == "root"
