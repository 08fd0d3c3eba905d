"""Socket.IO handshake authentication, with the real python-socketio client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import socketio
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from app.keys import AUTH_SERVICE, SESSIONS
from storage.db import read_session
from storage.models import GlobalRole
from storage.models import User as UserRow
from tests.conftest import TEST_JWT_SECRET, AppFactory
from tests.helpers import Api, User, claims, eventually, rsa_pems, unsigned_token

Client = TestClient[web.Request, web.Application]
WEBSOCKET = ["websocket"]


async def metric(client: Client, name: str, **labels: str) -> float | None:
    """One sample's value from GET /metrics; None when it was never recorded."""
    response = await client.get("/metrics")
    assert response.status == 200
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


async def assert_open_connections(client: Client, expected: float) -> None:
    assert await metric(client, "socketio_connections", namespace="/") == expected


class Probe:
    """A python-socketio client that records what its ``connect_error`` handler gets."""

    def __init__(self, client: Client) -> None:
        self.url = str(client.make_url("/"))
        self.sio = socketio.AsyncClient(reconnection=False)
        self.errors: list[Any] = []

        @self.sio.event  # type: ignore[misc]
        async def connect_error(data: Any) -> None:
            self.errors.append(data)

    async def connect(self, auth: Any, transports: list[str] | None = WEBSOCKET) -> None:
        await self.sio.connect(self.url, auth=auth, transports=transports, wait_timeout=5)

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
        await self.sio.shutdown()


async def assert_refused(client: Client, auth: Any, code: str) -> None:
    """The handshake is refused with ``code``, which is counted in /metrics."""
    before = await metric(client, "socketio_connections_refused_total", code=code) or 0.0
    probe = Probe(client)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await probe.connect(auth)
        assert not probe.sio.connected
    finally:
        await probe.close()
    assert len(probe.errors) == 1, probe.errors
    error = probe.errors[0]
    assert error["data"] == {"code": code}, error
    assert isinstance(error["message"], str) and error["message"], error
    after = await metric(client, "socketio_connections_refused_total", code=code)
    assert after == before + 1
    assert await metric(client, "socketio_connections", namespace="/") in (None, 0.0)


# --- accepted --------------------------------------------------------------------------


@pytest.mark.parametrize("transports", [WEBSOCKET, None], ids=["websocket", "polling-upgrade"])
async def test_good_token_connects(api: Api, client: Client, transports: list[str] | None) -> None:
    alice = await api.user("alice")
    probe = Probe(client)
    try:
        await probe.connect({"token": alice.access_token}, transports=transports)
        assert probe.sio.connected
        assert probe.errors == []
        await eventually(lambda: assert_open_connections(client, 1.0))
        if transports is None:

            def upgraded() -> None:
                assert probe.sio.transport() == "websocket"

            await eventually(upgraded)
        await probe.sio.disconnect()
        assert not probe.sio.connected
        await eventually(lambda: assert_open_connections(client, 0.0))
    finally:
        await probe.close()
    assert await metric(client, "socketio_connections_refused_total", code="unauthorized") is None


async def test_two_clients_are_counted(api: Api, client: Client) -> None:
    alice = await api.user("alice")
    bob = await api.user("bob")
    probes = [Probe(client), Probe(client)]
    try:
        for probe, user in zip(probes, (alice, bob), strict=True):
            await probe.connect({"token": user.access_token})
        await eventually(lambda: assert_open_connections(client, 2.0))
        await probes[0].sio.disconnect()
        await eventually(lambda: assert_open_connections(client, 1.0))
    finally:
        for probe in probes:
            await probe.close()
    await eventually(lambda: assert_open_connections(client, 0.0))


# --- refused ---------------------------------------------------------------------------


def expired(user: User) -> dict[str, str]:
    now = int(time.time())
    return {"token": jwt.encode(claims(user.id, iat=now - 3600, exp=now - 60), TEST_JWT_SECRET)}


AuthFor = Callable[[User], Any]
REFUSALS: list[tuple[str, AuthFor, str]] = [
    ("no-auth", lambda user: None, "unauthorized"),
    ("auth-without-token", lambda user: {}, "unauthorized"),
    ("empty-token", lambda user: {"token": ""}, "unauthorized"),
    ("token-not-a-string", lambda user: {"token": 42}, "unauthorized"),
    ("garbage-token", lambda user: {"token": "garbage"}, "invalid_token"),
    ("expired", expired, "token_expired"),
    ("alg-none", lambda user: {"token": unsigned_token(claims(user.id))}, "invalid_token"),
    (
        "forged",
        lambda user: {"token": jwt.encode(claims(user.id), "other-secret-" + "z" * 40)},
        "invalid_token",
    ),
    ("refresh-token", lambda user: {"token": user.refresh_token}, "invalid_token"),
]


@pytest.mark.parametrize(
    ("auth_for", "code"),
    [(auth_for, code) for _, auth_for, code in REFUSALS],
    ids=[name for name, _, _ in REFUSALS],
)
async def test_bad_handshake_is_refused(
    api: Api, client: Client, auth_for: AuthFor, code: str
) -> None:
    alice = await api.user("alice")
    await assert_refused(client, auth_for(alice), code)


async def test_refused_codes_accumulate(api: Api, client: Client) -> None:
    await assert_refused(client, None, "unauthorized")
    await assert_refused(client, {}, "unauthorized")
    assert await metric(client, "socketio_connections_refused_total", code="unauthorized") == 2.0


async def test_disabled_user_is_refused(api: Api, client: Client) -> None:
    root = await api.user("root", GlobalRole.ADMIN)
    alice = await api.user("alice")
    await api.call("PATCH", f"/api/v1/users/{alice.id}", user=root, json={"disabled": True})
    await assert_refused(client, {"token": alice.access_token}, "user_disabled")


async def test_a_crowd_connecting_at_once_is_checked_user_by_user(start_app: AppFactory) -> None:
    """The accounts a burst of connects misses are read together: each connection is
    still checked against its own user (the disabled user and the signed-out session
    in the crowd are refused, and nobody else)."""
    client = await start_app(access_cache_seconds=0)  # every check reads its account
    api = Api(client)
    root = await api.user("root", GlobalRole.ADMIN)
    people = [await api.user(f"member{i}") for i in range(24)]
    disabled, signed_out = people[3], people[17]
    await api.call("PATCH", f"/api/v1/users/{disabled.id}", user=root, json={"disabled": True})
    logout = {"refresh_token": signed_out.refresh_token}
    await api.call("POST", "/api/v1/auth/logout", json=logout, expect=204)
    probes = [Probe(client) for _ in people]
    try:
        outcomes = await asyncio.gather(
            *(
                probe.connect({"token": person.access_token})
                for probe, person in zip(probes, people, strict=True)
            ),
            return_exceptions=True,
        )
        refused = {
            person.username: [error["data"]["code"] for error in probe.errors]
            for person, probe in zip(people, probes, strict=True)
            if probe.errors
        }
        assert refused == {
            disabled.username: ["user_disabled"],
            signed_out.username: ["unauthorized"],
        }
        connected = [
            p.username for p, probe in zip(people, probes, strict=True) if probe.sio.connected
        ]
        assert connected == [p.username for p in people if p not in (disabled, signed_out)]
        assert sum(isinstance(outcome, Exception) for outcome in outcomes) == 2
        await eventually(lambda: assert_open_connections(client, 22.0))
    finally:
        await asyncio.gather(*(probe.close() for probe in probes))


async def test_a_failure_on_our_side_refuses_with_unavailable(
    api: Api, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11, finding 15: a database error inside the connect handler left the
    client with neither a connect nor a connect_error."""
    user = await api.user("ann")
    auth = client.app[AUTH_SERVICE]

    async def locked(token: str) -> Any:
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(auth, "authenticate_token", locked)
    await assert_refused(client, {"token": user.access_token}, "unavailable")
    monkeypatch.undo()
    probe = Probe(client)
    try:
        await probe.connect({"token": user.access_token})  # and it was only that
        assert probe.sio.connected
    finally:
        await probe.close()


# --- an external identity provider -----------------------------------------------------


async def test_many_first_connects_of_external_users_at_once(start_app: AppFactory) -> None:
    """Issue 11, finding 15: with an external provider, first-time users connecting at
    once failed (`database is locked` on SQLite: every connect took the write lock to
    look its user up), and the same new subject connecting twice at once raced on
    the unique key. All connect now, with one user per subject."""
    private_pem, public_pem = rsa_pems("provider")
    client = await start_app(jwt_secret=None, jwt_public_key=public_pem)

    def token(subject: str, name: str) -> str:
        return jwt.encode(claims(subject, preferred_username=name), private_pem, algorithm="RS256")

    subjects = [(f"sub-{i}", f"member{i}") for i in range(60)]
    subjects += [(f"sam-{i}", "sam") for i in range(4)]  # one name wanted by four
    tokens = [token(subject, name) for subject, name in subjects]
    tokens += [token("twin", "twin")] * 5  # one new subject, five tabs at once
    probes = [Probe(client) for _ in tokens]
    try:
        await asyncio.gather(
            *(probe.connect({"token": t}) for probe, t in zip(probes, tokens, strict=True))
        )
        assert [probe.errors for probe in probes if probe.errors] == []
        assert all(probe.sio.connected for probe in probes)
    finally:
        await asyncio.gather(*(probe.close() for probe in probes))
    async with read_session(client.app[SESSIONS]) as session:
        rows = (await session.execute(select(UserRow.external_subject, UserRow.username))).all()
    by_subject = dict(rows)
    assert len(rows) == len(by_subject) == len(subjects) + 1
    assert by_subject["twin"] == "twin" and by_subject["sub-7"] == "member7"
    sams = sorted(by_subject[f"sam-{i}"] for i in range(4))
    assert sams[-1] == "sam" and all(name.startswith("ext-") for name in sams[:-1])


async def test_a_known_external_user_connects_while_a_writer_holds_the_database(
    start_app: AppFactory,
) -> None:
    """Most connects are not a first sight: they read the user beside any writer
    instead of queueing for SQLite's write lock."""
    private_pem, public_pem = rsa_pems("provider")
    client = await start_app(jwt_secret=None, jwt_public_key=public_pem)
    token = jwt.encode(claims("known", preferred_username="known"), private_pem, algorithm="RS256")
    first = Probe(client)
    try:
        await first.connect({"token": token})
    finally:
        await first.close()
    probe = Probe(client)
    try:
        async with client.app[SESSIONS].begin() as session:
            await session.execute(update(UserRow).values(updated_at=func.now()))  # the lock
            await asyncio.wait_for(probe.connect({"token": token}), 10)  # before it commits
            assert probe.sio.connected
    finally:
        await probe.close()
