"""The assistant over many nodes (realtime/cluster/replies.py): real ``python -m app``
processes on one PostgreSQL database and Redis, as in tests/test_cluster.py (whose
fixtures these use), each pointed at this test's stand-in for the Messages API
(tests/fake_anthropic.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from app.errors import AiBusy
from app.events import EventClass
from realtime.cluster.replies import ClusterReplies, _apply, _Mirror, _Text
from realtime.cluster.target import RedisTarget
from realtime.delivery import Delivery, Event
from roomclient import CommandError, RoomClient
from tests.assistant_support import ask, of
from tests.cluster_nodes import (
    PREFIX,
    WAIT,
    StartNodes,
    api_of,
    three_members,
)
from tests.fake_anthropic import FakeAnthropic, Plan
from tests.helpers import User, eventually
from tests.test_yjs_js import Server

pytestmark = pytest.mark.slow

Clients = Callable[[Server, User], Awaitable[RoomClient]]
# A killed node's reply stops counting within its lease and a beat (8 + 2 s), and a
# surviving node's next beat tells the room.
LEASE = 20.0
TOKENS = [f"t{i} " for i in range(40)]


@pytest.fixture
def claude_nodes(
    anthropic_server: tuple[FakeAnthropic, str],
    start_nodes: StartNodes,
    shared_redis: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[int], Awaitable[tuple[FakeAnthropic, list[Server]]]]:
    """``await claude_nodes(n)``: n nodes asking this test's stand-in; every delta a
    chunk of its own (no batching by time), so that replies have many chunks."""
    fake, url = anthropic_server
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    monkeypatch.setenv("AI_CHUNK_INTERVAL_SECONDS", "0")
    monkeypatch.setenv("AI_PASSAGES", "0")

    async def start(count: int) -> tuple[FakeAnthropic, list[Server]]:
        return fake, await start_nodes(count, shared_redis)

    return start


def chunks_of(client: RoomClient, reply_id: str) -> list[dict[str, Any]]:
    return of(client, "ai:chunk", reply_id)


def streaming(client: RoomClient, reply_id: str, at_least: int) -> None:
    assert len(chunks_of(client, reply_id)) >= at_least


def ended(client: RoomClient, reply_id: str) -> dict[str, Any]:
    ends = of(client, "ai:done", reply_id) + of(client, "ai:error", reply_id)
    assert len(ends) == 1, client.events
    return ends[0]


def test_what_a_copy_read_from_redis_holds_is_not_delivered_again() -> None:
    """The events heard while a node's copy of a room's replies was read: those the
    read holds are dropped, the rest delivered (what a first join gets after its ack)."""

    def event(name: str, reply_id: str, **data: Any) -> Event:
        return Event(name, {"reply_id": reply_id, **data}, EventClass.CHAT)

    mirror = _Mirror(replies={"r": _Text(["a", "b", "c"], 3)}, loading=False)
    held = [
        event("ai:started", "r"),  # in the read (seq 0)
        event("ai:chunk", "r", seq=3, text="c"),  # in the read
        event("ai:chunk", "r", seq=4, text="d"),
        event("ai:chunk", "gone", seq=7, text="x"),  # ended before the read
        event("ai:done", "gone"),
        event("ai:started", "new"),  # started after it
        event("ai:chunk", "new", seq=1, text="n"),
    ]
    delivered = [e for e in held if _apply(mirror, e, replaying=True)]
    assert [(e.name, e.data["reply_id"]) for e in delivered] == [
        ("ai:chunk", "r"),
        ("ai:started", "new"),
        ("ai:chunk", "new"),
    ]
    assert mirror.so_far() == [
        {"reply_id": "r", "seq": 4, "text": "abcd"},
        {"reply_id": "new", "seq": 1, "text": "n"},
    ]
    # Live (not replaying): a reply whose start was lost still reaches the room; a
    # chunk past a gap (lost in an outage) too, and its text is to be read again.
    assert _apply(mirror, event("ai:chunk", "lost", seq=2, text="y"), replaying=False)
    assert _apply(mirror, event("ai:chunk", "new", seq=3, text="p"), replaying=False)
    assert mirror.gaps == {"new"}
    assert _apply(mirror, event("ai:done", "r"), replaying=False)
    assert [r["reply_id"] for r in mirror.so_far()] == ["new"]


class _Link:
    """What ClusterReplies uses of RedisLink: its node id, whether it is up, the
    commands queued on its publishing connection (run here on Redis by ``flush``), and
    the handlers of the others' actions."""

    node = b"testnode"

    def __init__(self) -> None:
        self.up = True
        self.queued: list[tuple[Any, ...]] = []
        self.handlers: dict[str, Any] = {}

    def handle(self, action: str, handler: Any) -> None:
        self.handlers[action] = handler

    def command(self, *args: Any) -> None:
        if self.up:
            self.queued.append(args)

    async def flush(self, redis: Redis) -> None:
        for args in self.queued:
            await redis.execute_command(*args)
        self.queued.clear()


async def test_the_replies_scripts_count_lease_and_keep_the_text(shared_redis: str) -> None:
    """In one process on Redis: the room's limit over every node, the text so far
    (written whole again after chunks the link dropped), the release, and a lease
    that ends."""
    prefix = f"{PREFIX}-scripts"
    link = _Link()
    replies = ClusterReplies(
        RedisTarget(shared_redis),
        prefix=prefix,
        link=link,
        delivery=Delivery(),  # type: ignore[arg-type]
    )
    redis = Redis.from_url(shared_redis)
    doc, user, first, second = (uuid.uuid4() for _ in range(4))
    try:
        await replies.admit(first, doc, user, per_room=1, per_user=2)
        with pytest.raises(AiBusy):  # as another node would be
            await replies.admit(second, doc, uuid.uuid4(), per_room=1, per_user=2)
        replies.streamed(first, "a")
        link.up = False  # Redis away: this chunk's RPUSH is not sent
        replies.streamed(first, "b")
        link.up = True
        replies.streamed(first, "c")
        await link.flush(redis)
        [[reply, node, chunks]] = await replies._read(args=[prefix, str(doc)])
        assert (reply.decode(), node.decode()) == (str(first), link.node.hex())
        assert chunks == [b"a", b"b", b"c"]
        # A node whose copy missed chunk 2 (heard 1 and 3) reads the text again.
        copy = _Mirror(replies={str(first): _Text(["a", "c"], 3)}, loading=False)
        copy.gaps.add(str(first))
        await replies._mend(copy)
        assert copy.so_far() == [{"reply_id": str(first), "seq": 3, "text": "abc"}]

        replies.ended(first)
        await link.flush(redis)
        assert await replies._read(args=[prefix, str(doc)]) == []
        await replies.admit(second, doc, user, per_room=1, per_user=2)  # the room is free
        with pytest.raises(AiBusy) as busy:  # the user's one reply, in another room
            await replies.admit(uuid.uuid4(), uuid.uuid4(), user, per_room=1, per_user=1)
        assert busy.value.message == "you have as many replies streaming as you may"

        # A lease that ends (its node stopped renewing it): removed once, by one caller.
        dead = uuid.uuid4()
        args = [prefix, str(doc), str(dead), str(user), "deadnode", 5, 5, 1]
        assert (await replies._admit(args=args))[0] == 0
        await asyncio.sleep(0.05)
        gone = await replies._beat(args=[prefix, 8000])
        assert gone == [f"{doc} {dead} {user}".encode()]
        assert await replies._beat(args=[prefix, 8000]) == []
    finally:
        keys = [key async for key in redis.scan_iter(f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        await replies.close()


async def test_a_reply_streams_to_the_room_on_every_node(
    claude_nodes: Callable[[int], Awaitable[tuple[FakeAnthropic, list[Server]]]],
    clients: Clients,
) -> None:
    fake, (a, b) = await claude_nodes(2)
    fake.plan(Plan(tokens=TOKENS[:12], delay=0.01))
    async with api_of(a) as api:
        ann, ben, _, doc_id = await three_members(api)
    on_a, on_b = await clients(a, ann), await clients(b, ben)
    await on_a.join(doc_id)
    await on_b.join(doc_id)

    reply_id = await ask(on_a, doc_id, "What is the plan?")
    await eventually(lambda: ended(on_b, reply_id), timeout=WAIT)
    done = ended(on_b, reply_id)
    assert done["status"] == "completed" and done["message"]["text"] == "".join(TOKENS[:12])
    for client in (on_a, on_b):
        assert len(of(client, "ai:started", reply_id)) == 1
        chunks = chunks_of(client, reply_id)
        assert [c["seq"] for c in chunks] == list(range(1, len(chunks) + 1))
        assert "".join(c["text"] for c in chunks) == "".join(TOKENS[:12])


async def test_a_reply_is_cancelled_from_another_node(
    claude_nodes: Callable[[int], Awaitable[tuple[FakeAnthropic, list[Server]]]],
    clients: Clients,
) -> None:
    fake, (a, b) = await claude_nodes(2)
    fake.plan(Plan(tokens=TOKENS, delay=0.1))
    async with api_of(a) as api:
        ann, ben, _, doc_id = await three_members(api)
    on_a, on_b = await clients(a, ann), await clients(b, ben)
    await on_a.join(doc_id)
    await on_b.join(doc_id)

    reply_id = await ask(on_a, doc_id, "A long answer, please")
    await eventually(lambda: streaming(on_b, reply_id, 2), timeout=WAIT)
    # Acked once node A has cancelled it: the model's stream is closed.
    assert await on_b.command("ai:cancel", {"document_id": doc_id, "reply_id": reply_id}) == {}
    # An event waited for with a deadline (eventually retries assertions: it would not
    # bound a wait that never returns).
    await asyncio.wait_for(fake.requests[-1].disconnected.wait(), WAIT)
    for client in (on_a, on_b):
        await eventually(lambda client=client: ended(client, reply_id), timeout=WAIT)
        done = ended(client, reply_id)
        assert done["status"] == "cancelled"
        assert done["message"]["metadata"]["status"] == "cancelled"
        streamed = "".join(c["text"] for c in chunks_of(client, reply_id))
        assert done["message"]["text"] == streamed and streamed != "".join(TOKENS)

    # Ended: a cancel now, from either node, finds nothing.
    for client in (on_a, on_b):
        with pytest.raises(CommandError) as refused:
            await client.command("ai:cancel", {"document_id": doc_id, "reply_id": reply_id})
        assert refused.value.code == "not_found"


async def test_a_join_on_another_node_mid_reply_gets_the_text_so_far_and_the_tail(
    claude_nodes: Callable[[int], Awaitable[tuple[FakeAnthropic, list[Server]]]],
    clients: Clients,
) -> None:
    fake, (a, b) = await claude_nodes(2)
    fake.plan(Plan(tokens=TOKENS, delay=0.05))
    async with api_of(a) as api:
        ann, ben, cat, doc_id = await three_members(api)
    on_a = await clients(a, ann)
    await on_a.join(doc_id)
    reply_id = await ask(on_a, doc_id, "What is the plan?")
    await eventually(lambda: streaming(on_a, reply_id, 5), timeout=WAIT)

    # Node B has nobody in the room: the first join reads the text so far from Redis;
    # the second finds it in B's copy.
    first = await clients(b, ben)
    first_ack = await first.command("join", {"document_id": doc_id})
    await eventually(lambda: streaming(first, reply_id, 5), timeout=WAIT)
    second = await clients(b, cat)
    second_ack = await second.command("join", {"document_id": doc_id})

    await eventually(lambda: ended(second, reply_id), timeout=WAIT)
    whole = "".join(TOKENS)
    assert ended(on_a, reply_id)["message"]["text"] == whole
    for client, ack in ((first, first_ack), (second, second_ack)):
        [so_far] = [r for r in ack["replies"] if r["reply_id"] == reply_id]
        assert 0 < so_far["seq"] < len(TOKENS), ack
        tail = chunks_of(client, reply_id)
        # No gap, no repeat: the seqs after the text so far, each once, to the last.
        assert [c["seq"] for c in tail] == list(range(so_far["seq"] + 1, len(TOKENS) + 1))
        assert so_far["text"] + "".join(c["text"] for c in tail) == whole
        assert of(client, "ai:started", reply_id) == []
        assert ended(client, reply_id)["status"] == "completed"
    assert second_ack["replies"][0]["seq"] > first_ack["replies"][0]["seq"]


async def test_the_room_limit_counts_replies_on_every_node(
    claude_nodes: Callable[[int], Awaitable[tuple[FakeAnthropic, list[Server]]]],
    clients: Clients,
) -> None:
    fake, (a, b) = await claude_nodes(2)
    fake.plan(Plan(tokens=TOKENS[:20], delay=0.05), Plan(tokens=["fine"]))
    async with api_of(a) as api:
        ann, ben, _, doc_id = await three_members(api)
    on_a, on_b = await clients(a, ann), await clients(b, ben)
    await on_a.join(doc_id)
    await on_b.join(doc_id)

    first = await ask(on_a, doc_id, "A long answer, please")
    with pytest.raises(CommandError) as refused:
        await ask(on_b, doc_id, "And mine?")
    assert refused.value.code == "ai_busy"
    # Its end frees the room for an ask on any node.
    await eventually(lambda: ended(on_b, first), timeout=WAIT)
    second = await ask(on_b, doc_id, "And mine?")
    await eventually(lambda: ended(on_a, second), timeout=WAIT)
    assert ended(on_a, second)["message"]["text"] == "fine"


async def test_a_killed_nodes_reply_frees_the_room_within_its_lease(
    claude_nodes: Callable[[int], Awaitable[tuple[FakeAnthropic, list[Server]]]],
    clients: Clients,
) -> None:
    fake, (a, b) = await claude_nodes(2)
    fake.plan(Plan(tokens=TOKENS * 10, delay=0.1), Plan(tokens=["after"]))
    async with api_of(b) as api:
        ann, ben, _, doc_id = await three_members(api)
    on_a, on_b = await clients(a, ann), await clients(b, ben)
    await on_a.join(doc_id)
    await on_b.join(doc_id)
    reply_id = await ask(on_a, doc_id, "A very long answer, please")
    await eventually(lambda: streaming(on_b, reply_id, 2), timeout=WAIT)

    await a.kill()
    # A cancel finds the reply still counted (its lease runs) and its node silent.
    with pytest.raises(CommandError) as unanswered:
        await on_b.command("ai:cancel", {"document_id": doc_id, "reply_id": reply_id})
    assert unanswered.value.code == "ai_unavailable"
    # Node B tells the room the reply ended with its node, once; then asks are taken.
    await eventually(lambda: ended(on_b, reply_id), timeout=LEASE)
    error = ended(on_b, reply_id)
    assert error["status"] == "failed" and error["error"]["code"] == "ai_unavailable"

    async def admitted() -> str:
        return await ask(on_b, doc_id, "Still there?")

    second = await eventually(admitted, timeout=WAIT)
    await eventually(lambda: ended(on_b, second), timeout=WAIT)
    assert ended(on_b, second)["message"]["text"] == "after"
    assert len(of(on_b, "ai:error", reply_id)) == 1
