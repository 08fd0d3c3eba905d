from __future__ import annotations

from tests.helpers import Api


async def test_register_login_me(api: Api) -> None:
    alice = await api.user("Alice")
    me = await api.call("GET", "/api/v1/auth/me", user=alice)
    assert me["username"] == "alice"
    assert me["role"] == "user"
