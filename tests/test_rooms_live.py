"""Presence, typing, live permission changes and token expiry on live connections."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from app.keys import CHAT_SERVICE
from roomclient import CommandError, RoomClient, RoomView
from storage.models import GlobalRole
from tests.conftest import AppFactory, ClientFactory
from tests.helpers import Api, User, arrivals, departures, equal, eventually

ROOT = Path(__file__).resolve().parent.parent


def events(client: RoomClient, name: str) -> list[dict[str, object]]:
    return [data for event, data in client.events if event == name]


async def test_presence_is_per_user_across_tabs(api: Api, connect: ClientFactory) -> None:
    """A second tab is not an arrival; the last tab closing is the departure."""
    ann, ben, doc = await api.room("editor")
    observer = await connect(ann)
    await observer.join(doc["id"])

    tab1, tab2 = await connect(ben), await connect(ben)
    await tab1.join(doc["id"])
    await tab2.join(doc["id"])
    # The observer hears of its own arrival too (its ack listed it already).
    await eventually(lambda: equal(arrivals(observer.events), [ann.id, ben.id]))
    snapshot = await observer.command("join", {"document_id": doc["id"]})
    [ben_entry] = [u for u in snapshot["presence"] if u["user_id"] == ben.id]
    assert ben_entry["connection_count"] == 2
    assert ben_entry["connections"] == []  # no state set yet: counted, not listed

    tab3 = await connect(ben)  # a tab that never sets a state: its leaving is no news
    await tab3.join(doc["id"])
    await tab3.close()
    await tab1.update_presence(doc["id"], {"cursor": 1})
    await eventually(lambda: assert_count(observer, "presence:state", 1))
    await tab1.close()
    await eventually(lambda: assert_count(observer, "presence:state", 2))
    assert [e["state"] for e in events(observer, "presence:state")] == [{"cursor": 1}, None]
    assert departures(observer.events) == []
    assert ben.id in observer.room(doc["id"]).presence

    await tab2.leave(doc["id"])
    await eventually(lambda: equal(departures(observer.events), [ben.id]))
    assert ben.id not in observer.room(doc["id"]).presence
    assert arrivals(observer.events) == [ann.id, ben.id]


def assert_count(client: RoomClient, name: str, count: int) -> None:
    assert len(events(client, name)) == count, client.events


async def test_connection_state_is_latest_wins_and_cleared_on_disconnect(
    api: Api, connect: ClientFactory
) -> None:
    ann, ben, doc = await api.room("editor")
    a, b = await connect(ann), await connect(ben)
    await a.join(doc["id"])
    await b.join(doc["id"])
    for line in (1, 2, 3):
        await b.update_presence(doc["id"], {"cursor": {"line": line}, "status": "editing"})
    room = a.room(doc["id"])
    await eventually(lambda: assert_cursor(room.presence[ben.id], {"line": 3}))

    late = await connect(ann)  # a late joiner sees the current state in the ack
    data = await late.command("join", {"document_id": doc["id"]})
    [entry] = [u for u in data["presence"] if u["user_id"] == ben.id]
    assert [c["state"]["cursor"] for c in entry["connections"]] == [{"line": 3}]

    await b.close()
    await eventually(lambda: equal(departures(a.events), [ben.id]))
    assert ben.id not in room.presence


def assert_cursor(user: dict[str, object], cursor: dict[str, int]) -> None:
    connections = user["connections"]
    assert isinstance(connections, dict)
    assert [state["cursor"] for state in connections.values()] == [cursor]


async def test_typing_is_throttled_and_expires(start_app: AppFactory) -> None:
    client = await start_app(typing_timeout_seconds=0.5, typing_throttle_seconds=30)
    api = Api(client)
    ann, ben, doc = await api.room("editor")
    url = str(client.make_url("/")).rstrip("/")
    async with RoomClient(url, ann.access_token) as a, RoomClient(url, ben.access_token) as b:
        await a.join(doc["id"])
        await b.join(doc["id"])
        for _ in range(5):  # keystrokes: one announcement, not five
            await b.set_typing(doc["id"], True)
        await eventually(lambda: assert_count(a, "typing", 1))
        assert a.room(doc["id"]).typing == {ben.id}
        # No renewal: it clears itself after typing_timeout_seconds.
        await eventually(lambda: assert_count(a, "typing", 2), timeout=5)
        assert events(a, "typing")[1] == {
            "document_id": doc["id"],
            "user_id": ben.id,
            "typing": False,
        }
        await b.set_typing(doc["id"], True)
        await b.set_typing(doc["id"], False)  # an explicit stop is never throttled
        await eventually(lambda: assert_count(a, "typing", 4))
        assert a.room(doc["id"]).typing == set()


async def test_removed_member_is_taken_out_at_once(api: Api, connect: ClientFactory) -> None:
    ann, ben, doc = await api.room("editor")
    a, b = await connect(ann), await connect(ben)
    await a.join(doc["id"])
    await b.join(doc["id"])

    await api.call(
        "DELETE", f"/api/v1/documents/{doc['id']}/members/{ben.id}", user=ann, expect=204
    )
    await eventually(lambda: assert_count(b, "room:removed", 1))
    assert events(b, "room:removed")[0] == {"document_id": doc["id"], "reason": "removed"}
    await eventually(lambda: equal(departures(a.events), [ben.id]))
    with pytest.raises(CommandError) as refused:
        await b.command("chat:send", {"document_id": doc["id"], "client_msg_id": "x", "text": "?"})
    assert refused.value.code == "not_joined"
    with pytest.raises(CommandError) as refused:
        await b.command("join", {"document_id": doc["id"]})
    assert refused.value.code == "not_found"
    await a.send(doc["id"], "ben cannot see this")
    assert events(b, "chat:message") == []


async def test_role_change_is_pushed_and_applies_to_the_next_command(
    api: Api, connect: ClientFactory
) -> None:
    ann, ben, doc = await api.room("editor")
    b = await connect(ben)
    await b.join(doc["id"])
    await b.send(doc["id"], "as editor")
    await api.call(
        "PUT",
        f"/api/v1/documents/{doc['id']}/members/{ben.id}",
        user=ann,
        json={"role": "viewer"},
    )
    await eventually(lambda: assert_count(b, "room:role", 1))
    assert b.room(doc["id"]).role == "viewer"
    with pytest.raises(CommandError) as refused:
        await b.send(doc["id"], "as viewer")
    assert refused.value.code == "forbidden"


async def test_deleting_the_document_empties_its_room(api: Api, connect: ClientFactory) -> None:
    ann, ben, doc = await api.room("viewer")
    a, b = await connect(ann), await connect(ben)
    await a.join(doc["id"])
    await b.join(doc["id"])
    await api.call("DELETE", f"/api/v1/documents/{doc['id']}", user=ann, expect=204)
    for client in (a, b):
        await eventually(lambda c=client: assert_count(c, "room:removed", 1))  # type: ignore[misc]
        assert events(client, "room:removed")[0]["reason"] == "deleted"
        assert doc["id"] not in client.rooms


async def test_disabled_user_is_disconnected_everywhere(api: Api, connect: ClientFactory) -> None:
    root = await api.user("root", GlobalRole.ADMIN)
    ben = await api.user("ben")
    tabs = [await connect(ben, reconnection=False) for _ in range(2)]
    await api.call("PATCH", f"/api/v1/users/{ben.id}", user=root, json={"disabled": True})
    for tab in tabs:
        await eventually(lambda t=tab: assert_ended(t, "user_disabled"))  # type: ignore[misc]


def assert_ended(client: RoomClient, code: str) -> None:
    assert client.ended is not None and client.ended["code"] == code
    assert not client.connected


async def test_expiring_token_is_renewed_over_the_socket(start_app: AppFactory) -> None:
    client = await start_app(access_token_ttl_seconds=3, token_renew_grace_seconds=1)
    api = Api(client)
    ann = await api.user("ann")
    doc = await api.document(ann)
    url = str(client.make_url("/")).rstrip("/")
    renewals = 0

    async def fresh_token() -> str:
        nonlocal renewals
        renewals += 1
        return str((await api.login("ann"))["access_token"])

    async with RoomClient(url, ann.access_token, refresh_token=fresh_token) as a:
        await a.join(doc["id"])
        # Well past the first token's expiry plus grace: still connected.
        await eventually(lambda: assert_at_least(lambda: renewals, 3), timeout=15)
        assert a.connected and a.ended is None
        await a.send(doc["id"], "still here")


def assert_at_least(value: object, minimum: int) -> None:
    assert callable(value) and value() >= minimum


async def test_unrenewed_token_ends_the_connection(start_app: AppFactory) -> None:
    client = await start_app(access_token_ttl_seconds=2, token_renew_grace_seconds=0.5)
    api = Api(client)
    ann = await api.user("ann")
    url = str(client.make_url("/")).rstrip("/")
    async with RoomClient(url, ann.access_token, reconnection=False) as a:
        await eventually(lambda: assert_count(a, "auth:expiring", 1), timeout=5)
        assert set(events(a, "auth:expiring")[0]) == {"expires_at", "disconnect_in"}
        await eventually(lambda: assert_ended(a, "token_expired"), timeout=10)


FROZEN_CLIENT = """
import asyncio, json, sys
from roomclient import RoomClient

async def main():
    url, token, document_id = sys.argv[1:4]
    client = RoomClient(url, token, reconnection=False)
    await client.connect()
    await client.join(document_id)
    print("joined", flush=True)
    await asyncio.sleep(60)  # stays connected until the test freezes and kills it

asyncio.run(main())
"""


@pytest.mark.slow
async def test_a_frozen_connection_leaves_presence_after_the_ping_timeout(
    start_app: AppFactory,
) -> None:
    """A client that stops answering (SIGSTOP: no FIN, no goodbye) is dropped."""
    client = await start_app(socket_ping_interval_seconds=1, socket_ping_timeout_seconds=1)
    api = Api(client)
    ann, ben, doc = await api.room("editor")
    url = str(client.make_url("/")).rstrip("/")
    async with RoomClient(url, ann.access_token) as observer:
        await observer.join(doc["id"])
        process = await start_frozen_client(url, ben, doc["id"])
        try:
            room = observer.room(doc["id"])
            await eventually(lambda: assert_present(room, ben.id, True), timeout=20)
            os.kill(process.pid, signal.SIGSTOP)
            # Within ping interval + timeout (2 s), with slack for a busy machine.
            await eventually(lambda: assert_present(room, ben.id, False), timeout=10)
        finally:
            process.kill()
            await process.wait()


def assert_present(room: RoomView, user_id: str, present: bool) -> None:
    assert (user_id in room.presence) is present, room.presence


async def start_frozen_client(url: str, user: User, document_id: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FROZEN_CLIENT,
        url,
        user.access_token,
        document_id,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
    assert line.strip() == b"joined", json.dumps(line.decode())
    return process


async def test_a_removal_while_a_join_is_under_way_is_not_missed(
    api: Api, connect: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11, finding 14: membership was checked before entering the room, and a
    removal in between reached the room's members, not the joining connection."""
    ann, ben, doc = await api.room("editor")
    joiner = await connect(ben)
    chat = api.client.app[CHAT_SERVICE]
    reading, removed = asyncio.Event(), asyncio.Event()
    enter_room = chat.enter_room

    async def slow_enter_room(*args: Any) -> Any:  # the join, between check and entry
        reading.set()
        await removed.wait()
        return await enter_room(*args)

    monkeypatch.setattr(chat, "enter_room", slow_enter_room)
    joining = asyncio.create_task(joiner.command("join", {"document_id": doc["id"]}))
    await reading.wait()
    await api.call(
        "DELETE", f"/api/v1/documents/{doc['id']}/members/{ben.id}", user=ann, expect=204
    )
    removed.set()
    with pytest.raises(CommandError) as refused:
        await joining
    assert refused.value.code == "not_found"
    monkeypatch.undo()
    owner = await connect(ann)
    await owner.join(doc["id"])
    await owner.send(doc["id"], "not for ben")
    with pytest.raises(CommandError) as not_joined:  # it never stayed in the room
        await joiner.command("chat:history", {"document_id": doc["id"]})
    assert not_joined.value.code == "not_joined"
