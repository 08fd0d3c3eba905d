"""Many nodes: room events between real server processes through Redis (realtime/cluster/).

Each test starts two or three ``python -m app`` processes on free ports, sharing one
PostgreSQL database of this module's own and one Redis channel prefix of this run's
own, and talks to them with real clients: the project's RoomClient (python-socketio)
and DocumentClient (the y-socket.io protocol). The outage test runs a ``redis-server``
of its own on a free port, which it stops and starts again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

import pytest

from app.config import Settings
from app.events import EventClass
from app.metrics import Metrics
from realtime.cluster import codec
from realtime.cluster.chat import ChatStitch
from realtime.delivery import Event
from realtime.wiring import cluster_link
from roomclient import DocumentClient, RoomClient
from tests.cluster_nodes import (
    PREFIX,
    WAIT,
    RedisProcess,
    StartNodes,
    api_of,
    channel,
    chat_texts,
    metric,
    subscribers,
    three_members,
)
from tests.conftest import (
    TEST_JWT_SECRET,
)
from tests.helpers import User, eventually
from tests.test_yjs_js import Server

pytestmark = pytest.mark.slow


# --- without Redis, and the bytes between nodes -----------------------------------------


def test_without_redis_there_is_no_link() -> None:
    settings = Settings(jwt_secret=TEST_JWT_SECRET, redis_url=None)
    assert cluster_link(settings, Metrics()) is None


@pytest.mark.parametrize(
    ("data", "kind", "key"),
    [
        ({"document_id": "d", "text": "é ✓", "n": [1, 2.5, None]}, EventClass.CHAT, None),
        (b"\x00\x01\xffyjs", EventClass.DOCUMENT, uuid.uuid4()),
        ({"state": {"x": 1}}, EventClass.PRESENCE, ("connection", "sid1")),
        ({"typing": True}, EventClass.TYPING, uuid.uuid4()),
    ],
)
def test_an_event_crosses_with_its_class_key_and_binary_payload(
    data: Any, kind: EventClass, key: Any
) -> None:
    node = b"n" * codec.NODE_ID_BYTES
    event = codec.decode(codec.encode(node, Event("some-event", data, kind, key)))
    assert (event.name, event.data, event.kind, event.key) == ("some-event", data, kind, key)
    assert type(event.data) is type(data) and type(event.key) is type(key)


def test_an_unreadable_message_is_refused() -> None:
    with pytest.raises(codec.BadMessage):
        codec.decode(b"n" * codec.NODE_ID_BYTES + b"\x00\x05[1,2")


def test_an_action_crosses_with_its_arguments() -> None:
    node = b"n" * codec.NODE_ID_BYTES
    message = codec.encode_action(node, "membership_changed", ("a", "b", None))
    assert codec.decode_action(message) == ("membership_changed", ["a", "b", None])
    for bad in (b"[1]", b"{}", b'["x", 2]', b"not json"):
        with pytest.raises(codec.BadMessage):
            codec.decode_action(node + bad)


# --- room events across nodes -----------------------------------------------------------


async def test_chat_presence_and_typing_reach_members_on_every_node(
    start_nodes: StartNodes,
    shared_redis: str,
    clients: Callable[[Server, User], Awaitable[RoomClient]],
) -> None:
    a, b, c = await start_nodes(3, shared_redis)
    async with api_of(a) as api:
        ann, ben, cat, doc_id = await three_members(api)
    on_a, on_b, on_c = await clients(a, ann), await clients(b, ben), await clients(c, cat)
    for client in (on_a, on_b, on_c):
        await client.join(doc_id)

    async def subscribed_everywhere() -> None:
        assert await subscribers(shared_redis, channel("doc", doc_id)) == 3

    await eventually(subscribed_everywhere, timeout=WAIT)

    for i in range(5):
        await on_a.send(doc_id, f"from a {i}")
    await on_b.send(doc_id, "from b")
    expected = [f"from a {i}" for i in range(5)] + ["from b"]

    def everyone_has_them() -> None:
        for client in (on_b, on_c):
            assert [m["text"] for m in client.room(doc_id).messages] == expected
        assert [m["text"] for m in on_a.room(doc_id).messages] == expected

    await eventually(everyone_has_them, timeout=WAIT)

    await on_b.update_presence(doc_id, {"cursor": 7})
    await on_c.set_typing(doc_id, True)

    def state_and_typing_arrived() -> None:
        for client in (on_a, on_c):
            connections = client.room(doc_id).presence[ben.id]["connections"]
            assert list(connections.values()) == [{"cursor": 7}]
        for client in (on_a, on_b):
            assert cat.id in client.room(doc_id).typing

    await eventually(state_and_typing_arrived, timeout=WAIT)
    # Once each: a node hears its own publications back from Redis and skips them.
    assert chat_texts(on_c).count("from a 0") == 1
    assert chat_texts(on_a).count("from b") == 1
    # Arrivals on other nodes are announced too (once each for the cluster:
    # tests/test_cluster_presence.py).
    await eventually(lambda: _present(on_a, doc_id, {ann.id, ben.id, cat.id}), timeout=WAIT)


def _present(client: RoomClient, doc_id: str, users: set[str]) -> None:
    assert set(client.room(doc_id).presence) >= users


async def test_a_yjs_update_reaches_a_document_client_on_another_node(
    start_nodes: StartNodes, shared_redis: str
) -> None:
    a, b = await start_nodes(2, shared_redis)
    async with api_of(a) as api:
        ann, ben, doc = await api.room("editor")
    doc_id = str(doc["id"])
    on_a = DocumentClient(a.base, ann.access_token, doc_id)
    on_b = DocumentClient(b.base, ben.access_token, doc_id)
    try:
        for client in (on_a, on_b):
            await client.connect()
            await asyncio.wait_for(client.synced.wait(), WAIT)

        async def subscribed() -> None:
            assert await subscribers(shared_redis, channel("yjs", doc_id)) == 2

        await eventually(subscribed, timeout=WAIT)
        # Multi-byte text: an update damaged on the way would not apply, or would
        # apply as something else.
        on_a.edit(lambda text: text.insert(0, "héllo ✓ "))
        await eventually(lambda: _equal(on_b.text, "héllo ✓ "), timeout=WAIT)
        # The other way, building on A's edit: node B's copy has it (it would wait
        # for what it follows otherwise, and reach nobody).
        on_b.edit(lambda text: text.insert(len("héllo ✓ ".encode()), "from b ✓"))
        await eventually(lambda: _equal(on_a.text, "héllo ✓ from b ✓"), timeout=WAIT)
        on_a.set_awareness({"user": "ann"})
        await eventually(
            lambda: _equal(on_b.awareness.states.get(on_a.doc.client_id), {"user": "ann"}),
            timeout=WAIT,
        )
    finally:
        await on_a.close()
        await on_b.close()


def _equal(actual: object, expected: object) -> None:
    assert actual == expected


async def test_a_node_with_no_member_in_a_room_hears_nothing_of_it(
    start_nodes: StartNodes,
    shared_redis: str,
    clients: Callable[[Server, User], Awaitable[RoomClient]],
) -> None:
    a, b, c = await start_nodes(3, shared_redis)
    async with api_of(a) as api:
        ann, ben, cat, doc_id = await three_members(api)
    on_a, on_b = await clients(a, ann), await clients(b, ben)
    on_c = await clients(c, cat)  # connected to C, in no room
    await on_a.join(doc_id)
    await on_b.join(doc_id)

    async def two_subscribers() -> None:
        assert await subscribers(shared_redis, channel("doc", doc_id)) == 2

    await eventually(two_subscribers, timeout=WAIT)
    for i in range(10):
        await on_a.send(doc_id, f"m{i}")
    await on_b.update_presence(doc_id, {"cursor": 1})
    await eventually(lambda: _equal(len(on_b.room(doc_id).messages), 10), timeout=WAIT)
    await eventually(lambda: _equal(len(on_a.room(doc_id).presence[ben.id]["connections"]), 1))

    # C is subscribed to its one user's own room (role changes), nothing else.
    assert await metric(c, "cluster_subscriptions") == 1
    assert await metric(c, "cluster_received_total") == 0
    assert await metric(b, "cluster_received_total") >= 10

    # Once someone joins there, C hears the room; once they leave, it stops.
    await on_c.join(doc_id)

    async def three_subscribers() -> None:
        assert await subscribers(shared_redis, channel("doc", doc_id)) == 3

    await eventually(three_subscribers, timeout=WAIT)
    await on_a.send(doc_id, "now c too")
    await eventually(lambda: _equal(chat_texts(on_c), ["now c too"]), timeout=WAIT)
    await on_c.leave(doc_id)
    await eventually(two_subscribers, timeout=WAIT)
    received = await metric(c, "cluster_received_total")
    await on_a.send(doc_id, "c left")
    await eventually(lambda: _equal(chat_texts(on_b)[-1], "c left"), timeout=WAIT)
    assert await metric(c, "cluster_received_total") == received


# --- Redis going away -------------------------------------------------------------------


async def test_redis_stopped_and_started_again_mid_traffic(
    own_redis: RedisProcess,  # first: it outlives the nodes
    start_nodes: StartNodes,
    clients: Callable[[Server, User], Awaitable[RoomClient]],
) -> None:
    a, b = await start_nodes(2, own_redis.url)
    async with api_of(a) as api:
        ann, ben, cat, doc_id = await three_members(api)
    on_a, local, on_b = await clients(a, ann), await clients(a, cat), await clients(b, ben)
    for client in (on_a, local, on_b):
        await client.join(doc_id)

    async def subscribed() -> None:
        assert await subscribers(own_redis.url, channel("doc", doc_id)) == 2

    await eventually(subscribed, timeout=WAIT)
    await on_a.send(doc_id, "before")
    await eventually(lambda: _equal(chat_texts(on_b), ["before"]), timeout=WAIT)

    await own_redis.stop()
    # Local members are served as before: every send is acked and reaches them.
    for i in range(5):
        await on_a.send(doc_id, f"during {i}")
    await eventually(lambda: _equal(chat_texts(local)[-1], "during 4"), timeout=WAIT)
    for node in (a, b):
        await eventually(partial(_up, node, 0), timeout=WAIT)

    await own_redis.start()
    # What was sent meanwhile reaches the other node's members with no new traffic,
    # and every member is told to resync (room:resync: presence, the last seq).
    during = [f"during {i}" for i in range(5)]
    await eventually(lambda: _equal(chat_texts(on_b), ["before", *during]), timeout=WAIT)

    def resynced(client: RoomClient) -> None:
        # One from its node, and maybe one asked for by the other node's resync.
        resyncs = [d for e, d in client.events if e == "room:resync"]
        assert resyncs
        assert {u["user_id"] for u in resyncs[-1]["presence"]} == {ann.id, ben.id, cat.id}

    for client in (on_a, local, on_b):
        await eventually(partial(resynced, client), timeout=WAIT)
    # Cross-node delivery resumes by itself, with no restart of either node.
    sent = 0

    async def resumed() -> None:
        nonlocal sent
        sent += 1
        await on_a.send(doc_id, f"after {sent}")
        await asyncio.sleep(0.1)
        assert any(text.startswith("after") for text in chat_texts(on_b))

    await eventually(resumed, timeout=WAIT, interval=0.1)
    await on_b.send(doc_id, "from b, after")
    await eventually(lambda: _equal(chat_texts(local)[-1], "from b, after"), timeout=WAIT)
    for node in (a, b):
        assert await metric(node, "cluster_outages_total") == 1
        assert await metric(node, "cluster_link_up") == 1
        # Logged once per outage, however many reconnection attempts it took.
        assert node.log.read_text().count("Redis link down") == 1


async def _up(node: Server, value: int) -> None:
    assert await metric(node, "cluster_link_up") == value


# --- what one node does to the others' connections --------------------------------------


async def test_removals_roles_sign_outs_and_deletions_reach_connections_on_other_nodes(
    start_nodes: StartNodes,
    shared_redis: str,
    clients: Callable[[Server, User], Awaitable[RoomClient]],
) -> None:
    a, b = await start_nodes(2, shared_redis)
    async with api_of(a) as api:
        ann, ben, cat, doc_id = await three_members(api)
        dan = await api.user("dan")
        await api.share(ann, doc_id, dan, "editor")
        ben_b, cat_b, dan_b = await clients(b, ben), await clients(b, cat), await clients(b, dan)
        for client in (ben_b, cat_b, dan_b):
            await client.join(doc_id)
        ben_doc = DocumentClient(b.base, ben.access_token, doc_id)
        try:
            await ben_doc.connect()
            await asyncio.wait_for(ben_doc.synced.wait(), WAIT)

            # Each change is made through node A; the connections are all on node B.
            path = f"/api/v1/documents/{doc_id}/members"
            await api.call("DELETE", f"{path}/{ben.id}", user=ann, expect=204)
            removed = {"document_id": doc_id, "reason": "removed"}
            await eventually(lambda: _has(ben_b, "room:removed", removed), timeout=WAIT)
            await eventually(lambda: _equal((ben_doc.ended or {}).get("code"), "removed"))

            await api.call("PUT", f"{path}/{cat.id}", user=ann, json={"role": "viewer"}, expect=200)
            await eventually(lambda: _equal(cat_b.room(doc_id).role, "viewer"), timeout=WAIT)
            await api.call(
                "POST", "/api/v1/auth/logout", json={"refresh_token": cat.refresh_token}, expect=204
            )
            await eventually(lambda: _equal((cat_b.ended or {}).get("code"), "session_revoked"))

            await api.call("DELETE", f"/api/v1/documents/{doc_id}", user=ann, expect=204)
            deleted = {"document_id": doc_id, "reason": "deleted"}
            await eventually(lambda: _has(dan_b, "room:removed", deleted), timeout=WAIT)
        finally:
            await ben_doc.close()


def _has(client: RoomClient, event: str, data: dict[str, Any]) -> None:
    assert (event, data) in client.events, client.events[-5:]


async def test_a_link_started_while_redis_is_down_connects_when_it_comes(
    own_redis: RedisProcess,
) -> None:
    """In process: two links on a Redis that is not there yet; local work goes on (what
    cannot be sent is counted); they link up by themselves once it starts, and neither
    hears its own events."""
    await own_redis.stop()
    settings = Settings(
        jwt_secret=TEST_JWT_SECRET, redis_url=own_redis.url, cluster_channel_prefix=PREFIX
    )
    metrics = [Metrics(), Metrics()]
    first, second = (cluster_link(settings, m) for m in metrics)
    assert first is not None and second is not None
    heard: tuple[list[Any], list[Any]] = ([], [])
    await first.start(lambda room, event: heard[0].append((room, event.data)))
    await second.start(lambda room, event: heard[1].append((room, event.data)))
    room = ("doc", uuid.uuid4())

    def event(n: int) -> Event:
        return Event("chat:message", {"n": n}, EventClass.CHAT)

    try:
        first.watch(room)
        second.watch(room)
        second.publish(room, event(0))
        assert not second.up
        assert metrics[1].registry.get_sample_value("cluster_dropped_total") == 1

        await own_redis.start()
        await eventually(lambda: _equal((first.up, second.up), (True, True)), timeout=WAIT)

        async def subscribed() -> None:
            assert await subscribers(own_redis.url, codec.channel_of(PREFIX, room)) == 2

        await eventually(subscribed, timeout=WAIT)
        second.publish(room, event(1))
        await eventually(lambda: _equal(heard[0], [(room, {"n": 1})]), timeout=WAIT)
        first.publish(room, event(2))
        await eventually(lambda: _equal(heard[1], [(room, {"n": 2})]), timeout=WAIT)
        # Redis sends first's subscription its own 2 before 3: had it not skipped it,
        # it would be here.
        second.publish(room, event(3))
        await eventually(lambda: _equal(len(heard[0]), 2), timeout=WAIT)
        assert heard[0] == [(room, {"n": 1}), (room, {"n": 3})]

        first.unwatch(room)
        await eventually(lambda: _subscribers_are(own_redis.url, room, 1), timeout=WAIT)
    finally:
        await first.close()
        await second.close()


async def _subscribers_are(redis_url: str, room: Any, count: int) -> None:
    assert await subscribers(redis_url, codec.channel_of(PREFIX, room)) == count


# --- chat across nodes: catch-up and live stitched by seq -------------------------------


async def test_joins_on_a_third_node_while_two_nodes_send_miss_nothing_and_repeat_nothing(
    start_nodes: StartNodes,
    shared_redis: str,
    clients: Callable[[Server, User], Awaitable[RoomClient]],
) -> None:
    a, b, c = await start_nodes(3, shared_redis)
    async with api_of(a) as api:
        ann, ben, cat, doc_id = await three_members(api)
        # Joiners take turns (a user's connections per node are capped, and a closed
        # one may linger a moment on the server).
        readers = [cat]
        for name in ("dan", "eve", "fay"):
            readers.append(await api.user(name))
            await api.share(ann, doc_id, readers[-1], "viewer")
    senders = [await clients(a, ann), await clients(a, ann)]
    senders += [await clients(b, ben), await clients(b, ben)]
    for sender in senders:
        await sender.join(doc_id)
    sent: dict[int, str] = {}  # seq: text, from the acks

    async def send_all(index: int, sender: RoomClient) -> None:
        for i in range(60):
            text = f"{index}-{i}"
            ack = await sender.send(doc_id, text)
            sent[ack["seq"]] = text

    sending = asyncio.gather(*(send_all(i, s) for i, s in enumerate(senders)))
    joiners: list[Joiner] = []
    open_joiners: list[Joiner] = []
    while not sending.done() or len(joiners) < 3:
        if len(joiners) % 4 == 3:
            # Now and then the room empties on the third node: a join starts it afresh.
            for joiner in open_joiners:
                joiner.closed_at = len(joiner.live)
                await joiner.client.close()
            open_joiners = []
        joiner = Joiner(await clients(c, readers[len(joiners) % len(readers)]))
        await joiner.join(doc_id)
        joiners.append(joiner)
        open_joiners.append(joiner)
        # Paced by the traffic: the next join once this one heard a message live.
        await eventually(lambda j=joiner: _heard_or_done(j, sending), timeout=WAIT)
    await sending
    last = len(sent)
    assert sorted(sent) == list(range(1, last + 1))
    await eventually(lambda: _all_heard(open_joiners, last), timeout=WAIT)
    for joiner in joiners:
        await joiner.catch_up(doc_id)
        seqs = [m["seq"] for m in joiner.backlog + joiner.live[: joiner.closed_at]]
        end = last if joiner.closed_at is None else len(seqs)
        assert seqs == list(range(1, end + 1)), (joiner.last_seq, seqs)
        assert all(m["text"] == sent[m["seq"]] for m in joiner.backlog + joiner.live)
    assert any(0 < joiner.last_seq < last for joiner in joiners)  # joined mid-traffic


class Joiner:
    """A connection that joins with ``since_seq`` 0 and keeps the ack's backlog apart
    from the messages that arrive live (RoomClient would merge the two)."""

    def __init__(self, client: RoomClient) -> None:
        self.client = client
        self.live: list[dict[str, Any]] = []
        self.backlog: list[dict[str, Any]] = []
        self.last_seq = -1
        self.has_more = False
        self.closed_at: int | None = None
        client.on(self._on_event)

    def _on_event(self, event: str, data: dict[str, Any]) -> None:
        if event == "chat:message":
            self.live.append(data["message"])

    async def join(self, doc_id: str) -> None:
        ack = await self.client.command("join", {"document_id": doc_id, "since_seq": 0})
        self.last_seq, self.backlog, self.has_more = (
            ack["last_seq"],
            ack["messages"],
            ack["has_more"],
        )

    async def catch_up(self, doc_id: str) -> None:
        """The rest of the backlog, up to the join's ``last_seq``, from history (read
        on a node of its own: this connection may be closed)."""
        while self.has_more:
            after = self.backlog[-1]["seq"] if self.backlog else 0
            async with RoomClient(self.client.url, self.client.token) as reader:
                await reader.command("join", {"document_id": doc_id})
                page, _ = await reader.history(doc_id, after_seq=after, limit=100)
            self.backlog += [m for m in page if m["seq"] <= self.last_seq]
            self.has_more = self.backlog[-1]["seq"] < self.last_seq


def _heard_or_done(joiner: Joiner, sending: asyncio.Future[Any]) -> None:
    assert joiner.live or sending.done()


def _all_heard(joiners: list[Joiner], last: int) -> None:
    for joiner in joiners:
        assert (joiner.live[-1]["seq"] if joiner.live else joiner.last_seq) >= last


# --- the stitch in one process, with stand-ins for Redis and the sockets -----------------


class _Link:
    """What ChatStitch uses of RedisLink: subscriptions confirmed at once."""

    def __init__(self) -> None:
        self.published: list[int] = []

    async def subscribed(self, room: Any) -> None:
        return None

    def subscribed_now(self, room: Any) -> bool:
        return True

    def publish(self, room: Any, event: Event) -> None:
        self.published.append(event.data["message"]["seq"])

    def unwatch(self, room: Any) -> None:
        return None


class _Delivery:
    """What ChatStitch uses of Delivery: who is in a room here, and what they got."""

    def __init__(self) -> None:
        self.rooms = self
        self.present: set[Any] = set()
        self.got: list[tuple[int, str | None]] = []

    def members(self, room: Any) -> dict[str, object]:
        return {"sid": object()} if room in self.present else {}

    def to_local_room(self, room: Any, event: Event, *, skip: str | None = None) -> int:
        self.got.append((event.data["message"]["seq"], skip))
        return 1


def _chat(doc: uuid.UUID, seq: int) -> dict[str, Any]:
    return {"document_id": str(doc), "message": {"seq": seq, "text": f"m{seq}"}}


def _heard(doc: uuid.UUID, seq: int) -> Event:
    return Event("chat:message", _chat(doc, seq), EventClass.CHAT)


async def test_a_node_passes_chat_on_in_seq_order_once_and_reads_a_gap() -> None:
    doc, link, delivery = uuid.uuid4(), _Link(), _Delivery()
    room = ("doc", doc)
    reads: list[tuple[int, int]] = []

    async def read_after(d: uuid.UUID, after: int, up_to: int) -> list[dict[str, Any]]:
        reads.append((after, up_to))
        return [_chat(d, n)["message"] for n in range(after + 1, up_to + 1)]

    async def last_stored(d: uuid.UUID) -> int:
        return 2

    stitch = ChatStitch(cast(Any, link), cast(Any, delivery))
    stitch.use(read_after, last_stored)
    assert await stitch.enter(doc, lambda: delivery.present.add(room)) == 2
    stitch.heard(room, _heard(doc, 4))  # past a gap: waits
    stitch.heard(room, _heard(doc, 3))  # the gap: both go
    stitch.heard(room, _heard(doc, 3))  # a copy
    stitch.announce(doc, 5, _chat(doc, 5), "sender-sid")  # this node's own
    assert delivery.got == [(3, None), (4, None), (5, "sender-sid")]
    assert link.published == [5]  # published at once
    stitch.heard(room, _heard(doc, 7))  # 6 never comes from Redis: read
    await eventually(lambda: _equal(delivery.got[3:], [(6, None), (7, None)]), timeout=WAIT)
    assert reads == [(5, 6)]
    # Another join on this node splits where its members are.
    assert await stitch.enter(doc, lambda: None) == 7


async def test_what_a_first_join_on_a_node_hears_before_its_split_comes_live_after_it() -> None:
    doc, link, delivery = uuid.uuid4(), _Link(), _Delivery()
    room = ("doc", doc)
    reading = asyncio.Event()
    answer = asyncio.Event()

    async def read_after(d: uuid.UUID, after: int, up_to: int) -> list[dict[str, Any]]:
        raise AssertionError("nothing to read")

    async def last_stored(d: uuid.UUID) -> int:
        reading.set()
        await answer.wait()
        return 2  # 3 committed after the read began

    stitch = ChatStitch(cast(Any, link), cast(Any, delivery))
    stitch.use(read_after, last_stored)
    joining = asyncio.ensure_future(stitch.enter(doc, lambda: delivery.present.add(room)))
    await reading.wait()
    stitch.heard(room, _heard(doc, 2))  # heard while the stored seq is read
    stitch.heard(room, _heard(doc, 3))
    assert delivery.got == []  # nobody here yet
    answer.set()
    assert await joining == 2  # 2 is in the join's backlog
    assert delivery.got == [(3, None)]  # 3 comes live: once, none lost
