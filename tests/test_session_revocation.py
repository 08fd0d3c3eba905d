"""Revoking a sign-in session (logout, refresh-token reuse) ends its connections.

Issue 11, finding 8: after logout a Yjs connection stayed open and its edits landed.
Access tokens name their session (``fam``); when it is revoked, the connections
opened with them end with ``session:ended`` ``session_revoked``, on ``/`` and on
every ``/yjs|<id>``, and the tokens stop authenticating. The user's other sessions
are untouched.
"""

from __future__ import annotations

from typing import Any

import jwt
import pytest
import socketio

from app.keys import AUTH_SERVICE, LIVE_DOCUMENTS
from roomclient import DocumentClient, RoomClient
from tests.conftest import TEST_JWT_SECRET, ClientFactory, DocumentFactory
from tests.helpers import Api, User, claims, eventually
from tests.test_socket_connect import metric
from tests.yjs_support import append, stored_text

LOGOUT = "/api/v1/auth/logout"
REFRESH = "/api/v1/auth/refresh"
ME = "/api/v1/auth/me"


async def second_session(api: Api, user: User) -> User:
    """The same user signed in again (another device): a session of its own."""
    tokens = await api.login(user.username)
    return User(user.id, user.username, tokens["access_token"], tokens["refresh_token"])


def ended(client: RoomClient | DocumentClient, code: str) -> None:
    """``session:ended`` with ``code`` arrived, and then the connection closed."""
    assert client.ended is not None and client.ended["code"] == code, client.ended
    assert client.ended["message"]
    assert not client.sio.connected


def still_open(client: RoomClient | DocumentClient) -> None:
    assert client.ended is None and client.sio.connected


async def assert_refused_on_main(api: Api, token: str) -> None:
    """A connect to ``/`` with ``token`` is refused ``unauthorized``."""
    url = str(api.client.make_url("/")).rstrip("/")
    refused: list[Any] = []
    probe = socketio.AsyncClient(reconnection=False)
    probe.on("connect_error", refused.append)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            # Long enough for the refusal to come (the client's 1 s default gave up
            # first in CI when a logout raced the connect on a busy machine).
            await probe.connect(
                url, auth={"token": token}, transports=["websocket"], wait_timeout=10
            )
    finally:
        await probe.shutdown()
    assert [error["data"]["code"] for error in refused] == ["unauthorized"]


async def assert_refused_on_document(api: Api, token: str, document_id: str) -> None:
    """A connect to ``/yjs|<document_id>`` with ``token`` is refused ``unauthorized``."""
    url = str(api.client.make_url("/")).rstrip("/")
    document = DocumentClient(url, token, document_id, reconnection=False)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await document.connect()
    finally:
        await document.close()
    assert document.refused is not None and document.refused["code"] == "unauthorized"


async def assert_refused_everywhere(api: Api, token: str, document_id: str) -> None:
    """A revoked session's access token opens nothing: REST, ``/`` or a document."""
    await api.error(
        "GET",
        ME,
        headers={"Authorization": f"Bearer {token}"},
        expect=401,
        code="unauthorized",
    )
    await assert_refused_on_main(api, token)
    await assert_refused_on_document(api, token, document_id)


async def test_access_tokens_name_their_session(api: Api) -> None:
    ann = await api.user("ann")
    rotated = await api.call("POST", REFRESH, json={"refresh_token": ann.refresh_token})
    unverified: dict[str, Any] = {"verify_signature": False}
    family = jwt.decode(ann.refresh_token, options=unverified)["fam"]
    for token in (ann.access_token, rotated["access_token"], rotated["refresh_token"]):
        assert jwt.decode(token, options=unverified)["fam"] == family
    other = await api.login("ann")
    assert jwt.decode(other["access_token"], options=unverified)["fam"] != family


async def test_logout_ends_the_sessions_connections_and_no_others(
    api: Api, connect: ClientFactory, open_document: DocumentFactory
) -> None:
    ann = await api.user("ann")
    phone = await second_session(api, ann)
    doc = await api.document(ann)
    main, document = await connect(ann, reconnection=False), await open_document(ann, doc["id"])
    other_main = await connect(phone, reconnection=False)
    other_document = await open_document(phone, doc["id"])

    await api.call("POST", LOGOUT, json={"refresh_token": ann.refresh_token}, expect=204)

    for client in (main, document):
        await eventually(lambda c=client: ended(c, "session_revoked"))  # type: ignore[misc]
    assert document.ended is not None and document.ended["message"] == (
        "this session was signed out"
    )
    await assert_refused_everywhere(api, ann.access_token, doc["id"])
    # The other session (same user) is untouched, and its edits still land.
    still_open(other_main)
    still_open(other_document)
    append(other_document, "still editing")

    async def landed() -> None:
        assert await stored_text(api, phone, doc) == "still editing"

    await eventually(landed)
    await other_main.join(doc["id"])


async def test_refresh_token_reuse_ends_the_sessions_connections_and_no_others(
    api: Api, connect: ClientFactory, open_document: DocumentFactory
) -> None:
    """A spent refresh token presented again means it leaked: the whole session is
    revoked, so the thief's connections and the holder's alike end."""
    ann = await api.user("ann")
    phone = await second_session(api, ann)
    doc = await api.document(ann)
    rotated = await api.call("POST", REFRESH, json={"refresh_token": ann.refresh_token})
    # A connection on the rotated token and one on the first: the same session.
    newer = User(ann.id, "ann", rotated["access_token"], rotated["refresh_token"])
    main, document = await connect(newer, reconnection=False), await open_document(ann, doc["id"])
    other_main = await connect(phone, reconnection=False)
    other_document = await open_document(phone, doc["id"])

    await api.error(
        "POST", REFRESH, json={"refresh_token": ann.refresh_token}, expect=401, code="token_reused"
    )

    for client in (main, document):
        await eventually(lambda c=client: ended(c, "session_revoked"))  # type: ignore[misc]
    assert main.ended is not None and "used twice" in main.ended["message"]
    await assert_refused_everywhere(api, rotated["access_token"], doc["id"])
    still_open(other_main)
    still_open(other_document)
    assert (await api.call("GET", ME, user=phone))["id"] == ann.id


async def test_a_connection_renewed_into_another_session_outlives_the_first(
    api: Api, connect: ClientFactory
) -> None:
    """What counts is the session of the token a connection holds now: ``auth:refresh``
    may hand it one of another session."""
    ann = await api.user("ann")
    phone = await second_session(api, ann)
    main = await connect(ann, reconnection=False)
    await main.command("auth:refresh", {"token": phone.access_token})
    await api.call("POST", LOGOUT, json={"refresh_token": ann.refresh_token}, expect=204)
    await main.command("auth:refresh", {"token": phone.access_token})  # a round trip
    still_open(main)
    await api.call("POST", LOGOUT, json={"refresh_token": phone.refresh_token}, expect=204)
    await eventually(lambda: ended(main, "session_revoked"))


async def test_tokens_issued_without_a_session_keep_working_until_they_expire(
    api: Api, connect: ClientFactory, open_document: DocumentFactory
) -> None:
    """Access tokens issued before they named their session cannot be tied to one:
    they stay valid until ``exp``, as before."""
    ann = await api.user("ann")
    doc = await api.document(ann)
    legacy = User(ann.id, "ann", jwt.encode(claims(ann.id), TEST_JWT_SECRET), ann.refresh_token)
    main, document = (
        await connect(legacy, reconnection=False),
        await open_document(legacy, doc["id"]),
    )
    await api.call("POST", LOGOUT, json={"refresh_token": ann.refresh_token}, expect=204)
    await main.join(doc["id"])  # a round trip after the logout: nothing ended meanwhile
    still_open(main)
    still_open(document)
    assert (await api.call("GET", ME, user=legacy))["id"] == ann.id


@pytest.mark.parametrize("where", ["/", "yjs"])
async def test_a_logout_while_a_connect_checks_its_token_is_not_missed(
    api: Api, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The logout commits and ends the session's connections while the connect is
    between its token check and being registered: the connect checks again once
    registered, and is refused."""
    ann = await api.user("ann")
    doc = await api.document(ann)
    auth = api.client.app[AUTH_SERVICE]
    check = auth.authenticate_token
    raced = False

    async def logout_during_the_first_check(token: str) -> Any:
        nonlocal raced
        principal = await check(token)
        if not raced:
            raced = True
            await api.call("POST", LOGOUT, json={"refresh_token": ann.refresh_token}, expect=204)
        return principal

    monkeypatch.setattr(auth, "authenticate_token", logout_during_the_first_check)
    if where == "/":
        await assert_refused_on_main(api, ann.access_token)
    else:
        await assert_refused_on_document(api, ann.access_token, doc["id"])
    assert raced
    for namespace in ("/", "/yjs"):
        assert await metric(api.client, "socketio_connections", namespace=namespace) in (None, 0)


async def test_a_logout_while_a_document_loads_is_not_missed(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection is registered but still connecting (its document loading) when
    the logout ends the session's connections: its connect is refused."""
    ann = await api.user("ann")
    doc = await api.document(ann)
    documents = api.client.app[LIVE_DOCUMENTS]
    load = documents.open

    async def logout_during_the_load(document_id: Any) -> Any:
        await api.call("POST", LOGOUT, json={"refresh_token": ann.refresh_token}, expect=204)
        return await load(document_id)

    monkeypatch.setattr(documents, "open", logout_during_the_load)
    url = str(api.client.make_url("/")).rstrip("/")
    document = DocumentClient(url, ann.access_token, doc["id"], reconnection=False)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await document.connect()
    finally:
        await document.close()
    assert document.refused is not None and document.refused["code"] == "session_revoked"
    assert await metric(api.client, "socketio_connections", namespace="/yjs") in (None, 0)
