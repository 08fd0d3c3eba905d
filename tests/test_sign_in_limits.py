"""Throttled sign-ins and registrations, and bounded password hashing (issue 11,
finding 4): the attack first, then what the server answers now.

conftest lifts these throttles for every other test; here each test sets its own
(``DEFAULTS`` are the shipped values).
"""

from __future__ import annotations

import asyncio
import threading
import time
from ipaddress import ip_network
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from argon2 import PasswordHasher

from app.auth.passwords import Passwords
from app.auth.throttle import client_address
from app.config import Settings
from app.errors import ServiceUnavailable
from tests.conftest import AppFactory
from tests.helpers import PASSWORD, Api

Client = TestClient[web.Request, web.Application]
DEFAULTS = {
    name: field.default
    for name, field in Settings.model_fields.items()
    if name.startswith(("login_", "registrations_"))
}
LOGIN = "/api/v1/auth/login"


async def login(client: Client, username: str, password: str, **headers: str) -> tuple[int, Any]:
    response = await client.post(
        LOGIN, json={"username": username, "password": password}, headers=headers
    )
    return response.status, (await response.json(), response.headers)


async def test_wrong_passwords_for_a_username_are_throttled(start_app: AppFactory) -> None:
    client = await start_app(**DEFAULTS)
    api = Api(client)
    await api.user("alice")  # one sign-in
    await api.user("bob")
    # The review sent 25 wrong passwords, then the right one: all were answered.
    statuses = [(await login(client, "alice", f"wrong guess {i}"))[0] for i in range(25)]
    burst = DEFAULTS["login_failures_per_username_burst"]
    assert statuses[:burst] == [401] * burst, statuses
    assert set(statuses[burst:]) == {429}, statuses

    status, (body, headers) = await login(client, "Alice", PASSWORD)  # any case
    assert status == 429
    assert body["error"]["code"] == "rate_limited"
    retry_after = body["error"]["details"]["retry_after"]
    assert 0 < retry_after <= 60 / DEFAULTS["login_failures_per_username_per_minute"]
    assert int(headers["Retry-After"]) >= retry_after

    # Another account from the same address is not locked out with alice's.
    assert (await login(client, "bob", PASSWORD))[0] == 200


async def test_a_right_password_does_not_count_against_its_username(
    start_app: AppFactory,
) -> None:
    client = await start_app(**{**DEFAULTS, "login_failures_per_username_burst": 2})
    await Api(client).user("alice")
    for _ in range(5):
        assert (await login(client, "alice", PASSWORD))[0] == 200
    assert (await login(client, "alice", "wrong password"))[0] == 401


async def test_sign_ins_from_one_address_are_throttled_whatever_the_username(
    start_app: AppFactory,
) -> None:
    client = await start_app(**{**DEFAULTS, "login_attempts_per_address_burst": 4})
    statuses = [(await login(client, f"user{i}", "whatever"))[0] for i in range(6)]
    assert statuses == [401] * 4 + [429] * 2, statuses
    # Without a trusted proxy, X-Forwarded-For is the client's to write: ignored.
    forged = await login(client, "user9", "whatever", **{"X-Forwarded-For": "203.0.113.9"})
    assert forged[0] == 429


async def test_behind_a_trusted_proxy_each_forwarded_address_has_its_own_throttle(
    start_app: AppFactory,
) -> None:
    client = await start_app(
        **{**DEFAULTS, "login_attempts_per_address_burst": 2},
        trusted_proxies="127.0.0.1,::1",
    )
    for address in ("203.0.113.1", "203.0.113.2"):
        for _ in range(2):
            status, _ = await login(
                client, "nobody", "wrong password", **{"X-Forwarded-For": address}
            )
            assert status == 401
    # The client may prepend anything; the proxy's own entry is the last one.
    spoofed = {"X-Forwarded-For": "198.51.100.7, 203.0.113.1"}
    assert (await login(client, "nobody", "wrong password", **spoofed))[0] == 429
    assert (await login(client, "nobody", "wrong password", **{"X-Forwarded-For": "203.0.113.3"}))[
        0
    ] == 401


async def test_registrations_from_one_address_are_throttled(start_app: AppFactory) -> None:
    client = await start_app(**{**DEFAULTS, "registrations_per_address_burst": 3})
    statuses = []
    for i in range(5):
        response = await client.post(
            "/api/v1/auth/register", json={"username": f"new{i}", "password": PASSWORD}
        )
        statuses.append(response.status)
    assert statuses == [201] * 3 + [429] * 2, statuses
    assert response.headers["Retry-After"]


async def test_concurrent_sign_ins_past_the_hashing_bound_are_refused_at_once(
    start_app: AppFactory,
) -> None:
    # At the default cost (the tests' is the least): logins take long enough to pile up.
    client = await start_app(
        password_hash_concurrency=1,
        password_hash_queue=2,
        password_hash_time_cost=3,
        password_hash_memory_kib=65536,
    )
    api = Api(client)
    for i in range(12):
        await api.user(f"user{i}")
    # 12 concurrent logins held both cores for 2.4 s in the review. (One username's
    # sign-ins are checked one at a time: these are 12 accounts.)
    results = await asyncio.gather(*(login(client, f"user{i}", PASSWORD) for i in range(12)))
    statuses = sorted(status for status, _ in results)
    assert 200 in statuses and 503 in statuses, statuses
    assert set(statuses) == {200, 503}, statuses
    for status, (body, headers) in results:
        if status == 503:
            assert body["error"]["code"] == "unavailable"
            assert headers["Retry-After"] == "1"


class CountingHasher(PasswordHasher):
    """A hasher that records how many hashes run at once."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.02)
        try:
            return super().hash(password, salt=salt)
        finally:
            with self._lock:
                self.running -= 1


async def test_password_hashing_runs_a_bounded_number_at_once() -> None:
    hasher = CountingHasher()
    passwords = Passwords(hasher, concurrency=2, queue=3)
    hasher.most = 0  # the dummy hash made at construction
    results = await asyncio.gather(
        *(passwords.hash(f"pw{i}") for i in range(10)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, ServiceUnavailable)]
    assert len(refused) == 5, results  # 2 running + 3 waiting were admitted
    assert all(r.retry_after == 1 for r in refused)
    assert hasher.most == 2
    assert await passwords.hash("later")  # the bound is on what is in flight


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("198.51.100.1", None, [], "198.51.100.1"),
        ("198.51.100.1", "203.0.113.5", [], "198.51.100.1"),  # not from a proxy
        ("10.0.0.2", "203.0.113.5", ["10.0.0.0/8"], "203.0.113.5"),
        ("10.0.0.2", "1.1.1.1, 203.0.113.5", ["10.0.0.0/8"], "203.0.113.5"),
        ("10.0.0.2", "203.0.113.5, 10.0.0.7", ["10.0.0.0/8"], "203.0.113.5"),  # two proxies
        ("10.0.0.2", "10.0.0.9, 10.0.0.7", ["10.0.0.0/8"], "10.0.0.9"),  # all trusted
        ("10.0.0.2", "", ["10.0.0.0/8"], "10.0.0.2"),
        ("::1", "2001:db8::5", ["::1"], "2001:db8::5"),
        ("10.0.0.2", "garbage", ["10.0.0.0/8"], "garbage"),  # a key, never an address
    ],
)
def test_client_address(
    peer: str, forwarded: str | None, trusted: list[str], expected: str
) -> None:
    networks = [ip_network(network) for network in trusted]
    assert client_address(peer, forwarded, networks) == expected


async def test_wrong_passwords_sent_at_once_are_counted_before_they_are_checked(
    start_app: AppFactory,
) -> None:
    client = await start_app(**DEFAULTS)
    await Api(client).user("alice")
    results = await asyncio.gather(*(login(client, "alice", f"guess {i:08}") for i in range(20)))
    statuses = sorted(status for status, _ in results)
    burst = DEFAULTS["login_failures_per_username_burst"]
    assert statuses == [401] * burst + [429] * (20 - burst), statuses


async def test_right_passwords_sent_at_once_all_sign_in(start_app: AppFactory) -> None:
    client = await start_app(**DEFAULTS)
    await Api(client).user("alice")
    burst = DEFAULTS["login_failures_per_username_burst"]
    results = await asyncio.gather(*(login(client, "alice", PASSWORD) for _ in range(3 * burst)))
    assert [status for status, _ in results] == [200] * 3 * burst
