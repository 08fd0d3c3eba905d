"""Presence over many nodes (realtime/cluster/presence.py), the per-user connection cap
over them, and ``GET /api/v1/cluster``: real ``python -m app`` processes on one
PostgreSQL database and Redis, as in tests/test_cluster.py (whose fixtures these use).

"Once" is checked without waiting on time: each node's events leave it in order, so
once a chat message sent through every node has arrived, any second announcement a
node made before it would have arrived too.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import socketio
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from realtime.cluster.presence import SharedPresence
from realtime.cluster.target import RedisTarget
from roomclient import RoomClient
from storage.models import GlobalRole
from tests.cluster_nodes import (
    PREFIX,
    WAIT,
    StartNodes,
    api_of,
    three_members,
)
from tests.helpers import PASSWORD, Api, User, eventually
from tests.test_cli import ROOT
from tests.test_rooms_presence import whole_presence
from tests.test_yjs_js import Server

pytestmark = pytest.mark.slow

Clients = Callable[[Server, User], Awaitable[RoomClient]]
REAPED = 15.0  # a killed node's users leave presence within this


def joins_of(client: RoomClient, user: User) -> int:
    return sum(
        1
        for event, data in client.events
        if event == "presence:changed" and user.id in {j["user_id"] for j in data["joined"]}
    )


def leaves_of(client: RoomClient, user: User) -> int:
    return sum(
        1
        for event, data in client.events
        if event == "presence:changed" and user.id in data["left"]
    )


async def barrier(doc_id: str, listener: RoomClient, senders: list[RoomClient]) -> None:
    """Every sender's node has sent ``listener`` all it sent before this returns (a
    node's events leave it in order)."""
    marks = [f"barrier {uuid.uuid4().hex}" for _ in senders]
    for sender, mark in zip(senders, marks, strict=True):
        await sender.send(doc_id, mark)

    def arrived() -> None:
        got = {d["message"]["text"] for e, d in listener.events if e == "chat:message"}
        assert set(marks) <= got

    await eventually(arrived, timeout=WAIT)


async def test_presence_across_three_nodes(
    start_nodes: StartNodes,
    shared_redis: str,
    clients: Clients,
) -> None:
    a, b, c = await start_nodes(3, shared_redis)
    async with api_of(a) as api:
        ann, ben, cat, doc_id = await three_members(api)
    on_a, on_b = await clients(a, ann), await clients(b, ben)
    await on_a.join(doc_id)
    await on_b.join(doc_id)
    await on_b.update_presence(doc_id, {"cursor": 3})
    await eventually(lambda: _present(on_a, doc_id, {ann.id, ben.id}), timeout=WAIT)

    # Node C has no one in the room yet: its answer comes from the other nodes' records.
    on_c = await clients(c, cat)
    await on_c.join(doc_id)
    assert set(on_c.room(doc_id).presence) == {ann.id, ben.id, cat.id}

    async def state_listed() -> None:
        # Another node's states reach a join ack within a second or so.
        ack = await on_c.command("join", {"document_id": doc_id})  # a fresh ack
        ben_entry = next(e for e in ack["presence"] if e["user_id"] == ben.id)
        assert [c["state"] for c in ben_entry["connections"]] == [{"cursor": 3}]

    await eventually(state_listed, timeout=WAIT)

    await barrier(doc_id, on_a, [on_b, on_c])
    await barrier(doc_id, on_b, [on_a, on_c])
    # One announcement per user, whichever node saw the arrival.
    for client in (on_a, on_b):
        assert joins_of(client, cat) == 1, client.events
    assert joins_of(on_a, ben) == 1


async def test_a_user_with_tabs_on_two_nodes_is_present_once(
    start_nodes: StartNodes,
    shared_redis: str,
    clients: Clients,
) -> None:
    a, b, c = await start_nodes(3, shared_redis)
    async with api_of(a) as api:
        ann, ben, _, doc_id = await three_members(api)
    watcher = await clients(c, ann)
    await watcher.join(doc_id)
    tab_a, tab_b = await clients(a, ben), await clients(b, ben)
    await tab_a.join(doc_id)
    await tab_b.join(doc_id)
    await eventually(lambda: _present(watcher, doc_id, {ben.id}), timeout=WAIT)

    async def two_connections() -> None:
        probe = await clients(c, ann)
        ack = await probe.command("join", {"document_id": doc_id})
        await probe.close()
        entry = next(e for e in ack["presence"] if e["user_id"] == ben.id)
        assert entry["connection_count"] == 2

    await eventually(two_connections, timeout=WAIT)

    await tab_a.close()  # one tab left: ben stays
    await barrier(doc_id, watcher, [tab_b])
    assert ben.id in watcher.room(doc_id).presence
    assert leaves_of(watcher, ben) == 0
    await tab_b.close()  # the last tab anywhere: ben leaves, once
    await eventually(lambda: _absent(watcher, doc_id, ben.id), timeout=WAIT)
    tab_again = await clients(a, ben)  # a node's events come in order: A's too, then
    await tab_again.join(doc_id)
    await eventually(lambda: _present(watcher, doc_id, {ben.id}), timeout=WAIT)
    assert joins_of(watcher, ben) == 2 and leaves_of(watcher, ben) == 1, watcher.events


async def test_the_users_of_a_killed_node_leave_presence(
    start_nodes: StartNodes,
    shared_redis: str,
    clients: Clients,
) -> None:
    a, b, c = await start_nodes(3, shared_redis)
    async with api_of(a) as api:
        ann, ben, cat, doc_id = await three_members(api)
        admin = await admin_of(a, api)
        on_a, on_b, on_c = await clients(a, ann), await clients(b, ben), await clients(c, cat)
        for client in (on_a, on_b, on_c):
            await client.join(doc_id)
        await on_c.update_presence(doc_id, {"cursor": 1})

        # GET /api/v1/cluster: admins only; every node alive, each with its own.
        await api.call("GET", "/api/v1/cluster", expect=401)
        await api.call("GET", "/api/v1/cluster", user=ann, expect=403)

        async def three_nodes() -> None:
            nodes = await cluster_nodes(api, admin)
            assert len(nodes) == 3
            assert {n["rooms"] for n in nodes} == {1} and {n["connections"] for n in nodes} == {1}
            assert [n["this"] for n in nodes].count(True) == 1

        await eventually(three_nodes, timeout=WAIT)
        await eventually(lambda: _present(on_a, doc_id, {ann.id, ben.id, cat.id}), timeout=WAIT)

        await c.kill()
        # Announced by a surviving node once C's lease has expired.
        await eventually(lambda: _absent(on_a, doc_id, cat.id), timeout=REAPED)
        await eventually(lambda: _absent(on_b, doc_id, cat.id), timeout=WAIT)
        assert leaves_of(on_a, cat) == 1

        async def two_nodes() -> None:
            assert len(await cluster_nodes(api, admin)) == 2

        await eventually(two_nodes, timeout=WAIT)
        ack = await on_a.command("join", {"document_id": doc_id})
        assert {e["user_id"] for e in ack["presence"]} == {ann.id, ben.id}


async def test_a_join_lists_the_rooms_users_a_page_at_a_time_over_every_node(
    start_nodes: StartNodes,
    shared_redis: str,
    clients: Clients,
) -> None:
    """Pages of 2 merge both nodes' users in the order of their ids, a user with tabs
    on both once, with both tabs counted and the other node's state listed."""
    a, b = await start_nodes(2, shared_redis, PRESENCE_PAGE_SIZE="2")
    async with api_of(a) as api:
        ann, ben, cat, doc_id = await three_members(api)
        dan, eve = await api.user("dan"), await api.user("eve")
        for user in (dan, eve):
            await api.share(ann, doc_id, user, "editor")
    for node, user in ((a, ann), (b, ben), (a, ben), (a, cat), (b, dan), (b, eve)):
        await (await clients(node, user)).join(doc_id)
    ben_on_b = await clients(b, ben)
    await ben_on_b.join(doc_id)
    await ben_on_b.update_presence(doc_id, {"cursor": 9})
    everyone = {user.id for user in (ann, ben, cat, dan, eve)}
    probe = await clients(a, ann)

    async def listed() -> None:
        entries = await whole_presence(probe, doc_id)  # pages checked against each other
        assert {entry["user_id"] for entry in entries} == everyone
        [ben_entry] = [entry for entry in entries if entry["user_id"] == ben.id]
        assert ben_entry["connection_count"] == 3
        assert [c["state"] for c in ben_entry["connections"]] == [{"cursor": 9}]

    await eventually(listed, timeout=WAIT)
    # roomclient pages through on its own, over both nodes.
    viewer = await clients(b, cat)
    await viewer.join(doc_id)
    assert set(viewer.room(doc_id).presence) == everyone


async def test_the_connection_cap_per_user_holds_across_nodes(
    start_nodes: StartNodes,
    shared_redis: str,
    clients: Clients,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAX_CONNECTIONS_PER_USER", "2")
    a, b = await start_nodes(2, shared_redis)
    async with api_of(a) as api:
        ann = await api.user("ann")
        ben = await api.user("ben")
    first = await clients(a, ann)
    await clients(b, ann)
    error = await refused(b, ann)
    assert error["data"] == {"code": "too_many_connections"}, error
    assert (await refused(a, ann))["data"] == {"code": "too_many_connections"}
    await clients(b, ben)  # per user, not for everyone

    await first.close()

    async def room_again() -> None:
        sio = socketio.AsyncClient(reconnection=False)
        try:
            await sio.connect(
                b.base, auth={"token": ann.access_token}, transports=["websocket"], wait_timeout=5
            )
        except socketio.exceptions.ConnectionError as exc:
            raise AssertionError("refused") from exc  # eventually() tries again
        finally:
            await close(sio)

    await eventually(room_again, timeout=WAIT)


async def admin_of(node: Server, api: Api) -> User:
    """An admin, made with ``python -m app create-user`` (the nodes are not this
    process), signed in through ``node``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "create-user",
        "root",
        "--role",
        "admin",
        "--password-stdin",
        env=node.env,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.wait_for(process.communicate(f"{PASSWORD}\n".encode()), 60)
    assert process.returncode == 0
    tokens = await api.login("root")
    return User("", "root", tokens["access_token"], tokens["refresh_token"])


async def cluster_nodes(api: Api, admin: User) -> list[dict[str, Any]]:
    body = await api.call("GET", "/api/v1/cluster", user=admin, expect=200)
    nodes: list[dict[str, Any]] = body["nodes"]
    return nodes


async def refused(node: Server, user: User) -> Any:
    sio = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    sio.on("connect_error", errors.append)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sio.connect(
                node.base, auth={"token": user.access_token}, transports=["websocket"]
            )
    finally:
        await close(sio)
    assert len(errors) == 1, errors
    return errors[0]


def _present(client: RoomClient, doc_id: str, users: set[str]) -> None:
    assert set(client.room(doc_id).presence) >= users


async def close(sio: socketio.AsyncClient) -> None:
    """python-engineio's client leaves its HTTP session open when a handshake fails."""
    if sio.connected:
        await sio.disconnect()
    await sio.shutdown()
    if sio.eio.http is not None and not sio.eio.http.closed:
        await sio.eio.http.close()


def _equal(actual: object, expected: object) -> None:
    assert actual == expected


def _absent(client: RoomClient, doc_id: str, user_id: str) -> None:
    assert user_id not in client.room(doc_id).presence


async def test_without_redis_the_cluster_is_this_node(
    api: Api, client: TestClient[Any, Any]
) -> None:
    admin = await api.user("root", GlobalRole.ADMIN)
    ann, _, doc = await api.room()
    await api.call("GET", "/api/v1/cluster", expect=401)
    await api.call("GET", "/api/v1/cluster", user=ann, expect=403)
    async with RoomClient(str(client.make_url("/")), ann.access_token) as on_it:
        await on_it.join(str(doc["id"]))
        (node,) = (await api.call("GET", "/api/v1/cluster", user=admin))["nodes"]
        assert (node["connections"], node["rooms"], node["this"]) == (1, 1, True)


async def test_a_node_taken_for_dead_is_reaped_once_and_records_itself_again(
    shared_redis: str,
) -> None:
    """In process, on Redis: two nodes' presence with their lease scripts. A node whose
    lease is gone is reaped by the other, which announces only the users no one else
    holds; the reaped node, alive after all, records itself again at its next beat and
    announces those users back."""
    prefix = f"{PREFIX}-reap-{uuid.uuid4().hex[:6]}"
    heard: dict[str, list[tuple[list[uuid.UUID], list[uuid.UUID]]]] = {"a": [], "b": []}
    nodes, announce = {}, {}
    for name in ("a", "b"):
        node = SharedPresence(
            RedisTarget(shared_redis), prefix=prefix, node=name.encode() * 8, max_per_user=5
        )
        # What PresenceChanges hands its batches to, and what it is told to publish.
        announce[node.node_id] = node.announcer(
            lambda d, left, joined, name=name: heard[name].append((left, list(joined)))
        )
        nodes[name] = node
    a, b = nodes["a"], nodes["b"]
    doc, ann, cat = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    try:
        for node in (a, b):
            await node.start()
        await eventually(lambda: _equal((a._synced, b._synced), (True, True)), timeout=WAIT)
        for node, users in ((a, [ann, cat]), (b, [ann])):
            for user in users:
                await node.join(doc, user, "someone", f"{user}-{node.node_id}")
            announce[node.node_id](doc, [], dict.fromkeys(users, "someone"))
            await node.settled(doc)
        # ann is on both nodes: joined once (by a, first); b announced nothing.
        assert heard == {"a": [([], [ann, cat])], "b": []}

        lease = a._tasks[1]  # a stops renewing its lease
        lease.cancel()
        await asyncio.gather(lease, return_exceptions=True)
        redis = Redis.from_url(shared_redis)
        try:
            await redis.delete(f"{prefix}:lease:{a.node_id}")  # as if it expired
        finally:
            await redis.aclose()
        # b reaps a at its next beat: cat had no one else, ann stays (on b).
        await eventually(lambda: _equal(heard["b"], [([cat], [])]), timeout=WAIT)
        assert [node.node_id for node in await b.nodes()] == [b.node_id]

        a._tasks[1] = asyncio.get_running_loop().create_task(a._keep_lease())
        # a beats again, finds itself unregistered and records what it holds: cat back.
        await eventually(lambda: _equal(heard["a"][1:], [([], [cat])]), timeout=WAIT)
        assert len(await b.nodes()) == 2
    finally:
        for node in (a, b):
            await node.close()
