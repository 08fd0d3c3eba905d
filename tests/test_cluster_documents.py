"""Documents over many nodes (realtime/cluster/documents.py, app/services/live_documents.py):
real ``python -m app`` processes on one PostgreSQL database and Redis, as in
tests/test_cluster.py (whose fixtures these use), with official y-socket.io clients
(Node) and the project's DocumentClient (Python) on different nodes.

A node's copy of a document is read as a fresh client gets it: a DocumentClient that
connects to the node and syncs receives the node's whole copy in its ``sync-step-1``
answer, so its state vector is the node's.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pycrdt
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.metrics import Metrics
from app.services.yjs_updates import build_document
from realtime.cluster.documents import LEASE_MS, DocumentLog
from realtime.cluster.target import RedisTarget
from realtime.wiring import cluster_link
from roomclient import DocumentClient
from storage.db import create_engine, create_sessionmaker
from storage.models import DocumentSnapshot, DocumentUpdate
from storage.repositories import crdt as crdt_repo
from tests.cluster_nodes import (
    PREFIX,
    WAIT,
    RedisProcess,
    StartNodes,
    api_of,
    channel,
    subscribers,
)
from tests.conftest import TEST_JWT_SECRET, NodePrograms
from tests.helpers import Api, User, eventually
from tests.test_yjs_js import Server
from tests.test_yjs_properties import clocks
from tests.yjs_js import YjsJsClient

pytestmark = pytest.mark.slow


@pytest.fixture
async def database(
    cluster_database: str,
) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(cluster_database)
    yield engine
    await engine.dispose()


@pytest.fixture
def no_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    """The nodes keep every update in the log (each row counted)."""
    monkeypatch.setenv("YJS_SNAPSHOT_DEBOUNCE_SECONDS", "600")
    monkeypatch.setenv("YJS_SNAPSHOT_MAX_DELAY_SECONDS", "600")


@pytest.fixture
def eager_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    """The nodes compact the log as soon as they can: several nodes snapshot together."""
    monkeypatch.setenv("YJS_SNAPSHOT_DEBOUNCE_SECONDS", "0.05")
    monkeypatch.setenv("YJS_SNAPSHOT_MAX_DELAY_SECONDS", "0.2")


async def members(api: Api, count: int) -> tuple[list[User], str]:
    """An owner and ``count - 1`` editors of a new document."""
    owner, editor, doc = await api.room("editor")
    users = [owner, editor]
    for i in range(count - 2):
        user = await api.user(f"editor{i}")
        await api.share(owner, doc["id"], user, "editor")
        users.append(user)
    return users, str(doc["id"])


async def copy_of(node: Server, user: User, doc_id: str) -> pycrdt.Doc[Any]:
    """The node's copy of the document, as a fresh client receives it."""
    client = DocumentClient(node.base, user.access_token, doc_id, reconnection=False)
    try:
        await client.connect()
        await asyncio.wait_for(client.synced.wait(), WAIT)
        return client.doc
    finally:
        await client.close()


async def text_of(node: Server, user: User, doc_id: str) -> str:
    async with api_of(node) as api:
        body = await api.call("GET", f"/api/v1/documents/{doc_id}/content", user=user)
    return str(body["text"])


async def converged(
    nodes: list[Server], user: User, doc_id: str, expected: pycrdt.Doc[Any]
) -> None:
    """Every node's copy has ``expected``'s state vector and text."""

    async def check() -> None:
        want = clocks(expected.get_state())
        text = str(expected.get("content", type=pycrdt.Text))
        for node in nodes:
            copy = await copy_of(node, user, doc_id)
            assert clocks(copy.get_state()) == want, node.base
            assert str(copy.get("content", type=pycrdt.Text)) == text, node.base
            assert await text_of(node, user, doc_id) == text, node.base

    await eventually(check, timeout=WAIT)


async def doc_of(client: YjsJsClient) -> pycrdt.Doc[Any]:
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    doc.apply_update(await client.state())
    return doc


async def rows(engine: AsyncEngine, model: Any, doc_id: str) -> int:
    async with create_sessionmaker(engine)() as session:
        count = await session.scalar(
            select(func.count()).select_from(model).where(model.document_id == uuid.UUID(doc_id))
        )
    return int(count or 0)


async def stored(engine: AsyncEngine, doc_id: str) -> pycrdt.Doc[Any]:
    """The document as a load rebuilds it from the database."""
    async with create_sessionmaker(engine)() as session:
        document = await crdt_repo.load(session, uuid.UUID(doc_id))
    doc, skipped = build_document(document)
    assert skipped == []
    return doc


async def test_js_clients_on_three_nodes_converge_and_each_update_is_stored_once(
    no_snapshots: None,
    start_nodes: StartNodes,
    shared_redis: str,
    node_programs: NodePrograms,
    database: AsyncEngine,
) -> None:
    nodes = await start_nodes(3, shared_redis)
    async with api_of(nodes[0]) as api:
        users, doc_id = await members(api, 3)
    writers: list[YjsJsClient] = []
    for i, node in enumerate(nodes):
        client = await node_programs(YjsJsClient, node.base)
        await client.synced_as(doc_id, users[i].access_token)
        writers.append(client)
    # A Python client on node B counts what reaches it: each update once.
    watcher = DocumentClient(nodes[1].base, users[1].access_token, doc_id)
    received: list[bytes] = []

    def heard(update: bytes) -> None:
        received.append(update)
        watcher._apply(update)

    watcher.sio.on("sync-update", heard, namespace=watcher.namespace)
    await watcher.connect()
    await asyncio.wait_for(watcher.synced.wait(), WAIT)

    rounds = 8
    # Every client types at the same time on its own node, each at the start of the
    # text as it sees it (concurrent inserts at one place: the CRDT orders them).
    await asyncio.gather(
        *(_type(client, [f"<{i}.{n}>" for n in range(rounds)]) for i, client in enumerate(writers))
    )
    # And a late joiner on node C while A types: it subscribes, then loads.
    typing = asyncio.ensure_future(_type(writers[0], [f"[late {n}]" for n in range(5)]))
    late = await node_programs(YjsJsClient, nodes[2].base)
    await late.synced_as(doc_id, users[2].access_token)
    await typing

    expected = await doc_of(writers[0])
    text = str(expected.get("content", type=pycrdt.Text))
    for n in range(rounds):
        for i in range(3):
            assert f"<{i}.{n}>" in text
    for client in [*writers, late]:
        await client.wait_text(text, within=WAIT)
        assert clocks((await doc_of(client)).get_state()) == clocks(expected.get_state())
    await converged(nodes, users[0], doc_id, expected)

    # Stored once each: one log row per edit of the clients (nothing snapshots here).
    edits = 3 * rounds + 5
    assert await rows(database, DocumentUpdate, doc_id) == edits
    assert clocks((await stored(database, doc_id)).get_state()) == clocks(expected.get_state())
    # Delivered once each: node B's watcher got every edit made on A and C, and on B
    # by the other client, once (the room relay does not carry them as well).
    await eventually(lambda: _equal(watcher.text, text), timeout=WAIT)
    assert len(received) == edits
    await watcher.close()


async def _type(client: YjsJsClient, pieces: list[str]) -> None:
    for piece in pieces:
        await client.insert(0, piece)


def _equal(actual: object, expected: object) -> None:
    assert actual == expected


async def test_snapshots_on_several_nodes_lose_no_update(
    eager_snapshots: None,
    start_nodes: StartNodes,
    shared_redis: str,
    database: AsyncEngine,
) -> None:
    nodes = await start_nodes(3, shared_redis)
    async with api_of(nodes[0]) as api:
        users, doc_id = await members(api, 3)
    clients = [
        DocumentClient(node.base, users[i].access_token, doc_id) for i, node in enumerate(nodes)
    ]
    try:
        for client in clients:
            await client.connect()
            await asyncio.wait_for(client.synced.wait(), WAIT)
        # Bursts from every node with pauses between them longer than the debounce:
        # each node snapshots between bursts while the others write.
        for burst in range(6):
            for i, client in enumerate(clients):
                for n in range(5):
                    piece = f"({burst}.{i}.{n})"
                    client.edit(lambda text, piece=piece: text.insert(0, piece))
            await asyncio.sleep(0.1)
        expected = clients[0].doc

        def agree() -> None:
            texts = {client.text for client in clients}
            assert len(texts) == 1, texts
            assert len(clients[0].text) == 6 * 3 * 5 * len("(0.0.0)")

        await eventually(agree, timeout=WAIT)
        await converged(nodes, users[0], doc_id, expected)

        async def compacted() -> None:
            assert await rows(database, DocumentUpdate, doc_id) == 0
            assert await rows(database, DocumentSnapshot, doc_id) == 1

        await eventually(compacted, timeout=WAIT)
        assert clocks((await stored(database, doc_id)).get_state()) == clocks(expected.get_state())
        assert "newer snapshot" not in "".join(node.log.read_text() for node in nodes)
    finally:
        for client in clients:
            await client.close()


async def test_a_node_that_missed_updates_while_redis_was_away_catches_up(
    own_redis: RedisProcess,  # first: it outlives the nodes
    no_snapshots: None,
    start_nodes: StartNodes,
) -> None:
    a, b = await start_nodes(2, own_redis.url)
    async with api_of(a) as api:
        users, doc_id = await members(api, 2)
    on_a = DocumentClient(a.base, users[0].access_token, doc_id)
    on_b = DocumentClient(b.base, users[1].access_token, doc_id)
    try:
        for client in (on_a, on_b):
            await client.connect()
            await asyncio.wait_for(client.synced.wait(), WAIT)
        on_a.edit(lambda text: text.insert(0, "before "))
        await eventually(lambda: _equal(on_b.text, "before "), timeout=WAIT)

        await own_redis.stop()
        # Both nodes go on serving their own clients; what each stores is lost to
        # the other until Redis is back.
        on_a.edit(lambda text: text.insert(len("before "), "from a "))
        with on_b.doc.transaction():
            on_b.doc.get("notes", type=pycrdt.Text).insert(0, "from b")
        await eventually(lambda: _equal(on_a.text, "before from a "), timeout=WAIT)
        await asyncio.sleep(0.5)  # given time, still nothing crosses
        assert on_b.text == "before "

        await own_redis.start()
        # No client sends anything more: each node reads what it lacks from the log
        # and hands it to its client.
        await eventually(lambda: _equal(on_b.text, "before from a "), timeout=WAIT)
        await eventually(
            lambda: _equal(str(on_a.doc.get("notes", type=pycrdt.Text)), "from b"),
            timeout=WAIT,
        )
        await converged([a, b], users[0], doc_id, on_a.doc)
        assert "update(s) read from the log" in b.log.read_text()
    finally:
        await on_a.close()
        await on_b.close()


async def test_a_node_holding_a_document_without_yjs_clients_applies_the_others_updates(
    monkeypatch: pytest.MonkeyPatch,
    start_nodes: StartNodes,
    shared_redis: str,
) -> None:
    """Node B holds the document for a REST read only (kept in memory for a while after
    it); an edit on node A reaches B's copy, which B's next read and REST edit build on."""
    monkeypatch.setenv("YJS_UNLOAD_AFTER_SECONDS", "600")
    a, b = await start_nodes(2, shared_redis)
    async with api_of(a) as api:
        users, doc_id = await members(api, 2)
    updates = channel("ylog", doc_id)
    assert await subscribers(shared_redis, updates) == 0  # nobody holds it yet
    assert await text_of(b, users[1], doc_id) == ""  # loaded on B, no Yjs client there
    assert await subscribers(shared_redis, updates) == 1  # subscribed before it loaded
    on_a = DocumentClient(a.base, users[0].access_token, doc_id)
    try:
        await on_a.connect()
        await asyncio.wait_for(on_a.synced.wait(), WAIT)
        assert await subscribers(shared_redis, updates) == 2
        on_a.edit(lambda text: text.insert(0, "from a"))

        async def read_on_b() -> None:
            assert await text_of(b, users[1], doc_id) == "from a"

        await eventually(read_on_b, timeout=WAIT)
        async with api_of(b) as api:
            body = await api.call(
                "POST",
                f"/api/v1/documents/{doc_id}/content",
                user=users[1],
                json={"text": ", then b", "mode": "append"},
            )
        assert body["text"] == "from a, then b"
        await eventually(lambda: _equal(on_a.text, "from a, then b"), timeout=WAIT)
    finally:
        await on_a.close()


async def test_one_node_at_a_time_holds_a_documents_snapshot_lease(
    shared_redis: str,
) -> None:
    settings = Settings(
        jwt_secret=TEST_JWT_SECRET, redis_url=shared_redis, cluster_channel_prefix=PREFIX
    )
    link = cluster_link(settings, Metrics())
    assert link is not None
    first, second = (DocumentLog(link, RedisTarget(shared_redis), prefix=PREFIX) for _ in "12")
    document_id = uuid.uuid4()
    key = f"{PREFIX}:snapshot:{document_id}"
    redis = Redis.from_url(shared_redis)
    try:
        async with first.snapshot_turn(document_id) as mine:
            assert mine
            assert 0 < await redis.pttl(key) <= LEASE_MS
            async with second.snapshot_turn(document_id) as theirs:
                assert not theirs
        async with second.snapshot_turn(document_id) as theirs:
            assert theirs  # released at the end of the first turn
        # A holder whose lease ran out (another node holds it now) releases nothing.
        async with first.snapshot_turn(document_id) as mine:
            assert mine
            await redis.set(key, "another node's token", px=LEASE_MS)
        assert await redis.get(key) == b"another node's token"
    finally:
        await redis.delete(key)
        await redis.aclose()
        for log in (first, second):
            await log.close()
        await link.close()
