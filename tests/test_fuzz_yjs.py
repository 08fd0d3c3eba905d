"""Fuzzing what a document connection sends (issue 11): mutated and random Yjs updates
against documents with real content, sent as a client sends them, interleaved with good
edits; then the server is killed (SIGKILL) and started again on the same database.

The corpus: the poison of tests/data/yjs_poison.json and its target, the updates of a
seeded editing session (three peers, Unicode of one to four UTF-8 bytes, deletions, a
map), edits made after each of those two documents (new to a server that holds it),
and the crafted updates of tests/data/yjs_fuzz_found.json. Each fuzzed update is
one of those, or one mutated one to three times: a byte nudged by one (most often),
bits flipped, a byte set, truncated, spliced with another, a varint blown up, bytes
inserted, or random bytes; a few are not binary at all, and one is over the size limit.
Everything is drawn from a ``random.Random`` with a fixed seed, and the test's clients
have fixed Yjs client ids: a failure replays (up to how the server batches writes).

No REST route takes a Yjs update (POST .../content takes text): REST edits are among
the good edits. An edit is acknowledged when a second connection receives it (the
server relays only what it has stored) or when its REST request is answered.

In process, one update at a time: each is answered within a bounded wait (a hang
fails), applied or unchanged or refused with its code told to its sender (never
internal); after each refusal the document built from storage is the one in memory; a
viewer's tries change nothing; at the end every acknowledged edit is in the text, an
observer holds what the server holds, and a fresh connection is sent it. With a server
process: a flood with good edits and snapshots in between, then SIGKILL and a restart
on the same database: every document loads (REST, a fresh connection, the killed
server's database: one text) with every acknowledged edit. And each harmful update
found so far, in a group commit with a good edit.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import socketio
from aiohttp import web
from aiohttp.test_utils import TestClient
from pycrdt import Doc, Map, Text

from app.errors import InvalidUpdate
from app.keys import LIVE_DOCUMENTS, SESSIONS
from app.services.yjs_updates import EMPTY_UPDATE, build_document, state_vector
from roomclient import DocumentClient
from storage.db import create_engine, create_sessionmaker
from storage.repositories import crdt as crdt_repo
from storage.repositories.crdt import StoredDocument
from tests import test_yjs_js
from tests.conftest import AppFactory
from tests.helpers import Api, User, eventually
from tests.test_yjs_js import Server
from tests.yjs_support import append

# The fixture of test_yjs_js.py: `python -m app` as a child process, ended by its PID.
server = test_yjs_js.server

DATA = Path(__file__).parent / "data"
POISON = json.loads((DATA / "yjs_poison.json").read_text())
FOUND = json.loads((DATA / "yjs_fuzz_found.json").read_text())["cases"]
SEED = 11
WAIT = 10.0  # seconds any one answer or convergence may take
MAX_UPDATE_BYTES = 64 * 1024
# What a refused update may be answered with; never internal, nor unavailable (which
# says the server failed, not the update).
REFUSALS = {"invalid_update", "update_too_large", "document_too_large"}
IN_PROCESS_UPDATES = 150  # per document, two documents
KILL_ROUNDS, KILL_UPDATES_PER_ROUND = 16, 30  # per document, three documents
# The flood is the point: no rate limit gets in its way.
UNLIMITED = {"yjs_messages_per_second": 1e6, "yjs_message_burst": 1_000_000}


def from_hex(value: str) -> bytes:
    return bytes.fromhex(POISON["target"] if value == "poison" else value)


def text_of(doc: Doc[Any]) -> str:
    return str(doc.get("content", type=Text))


# --- the corpus ------------------------------------------------------------------------


def editing_session(seed: int) -> tuple[bytes, list[bytes]]:
    """Three peers edit together, syncing now and then: the document's final state and
    every update the peers made."""
    rng = random.Random(seed)
    peers: list[Doc[Any]] = [Doc(client_id=rng.randrange(1, 2**32)) for _ in range(3)]
    updates: list[bytes] = []
    for peer in peers:
        peer.observe(lambda event: updates.append(event.update))
    pieces = ["a", "hello ", "é", "e\u0301", "中", "😀", "\n", "xyz"]
    for _ in range(80):
        peer = rng.choice(peers)
        text = peer.get("content", type=Text)
        current = str(text)
        roll = rng.random()
        if roll < 0.6 or not current:
            at = rng.randint(0, len(current))
            text.insert(len(current[:at].encode()), rng.choice(pieces))
        elif roll < 0.85:
            start = rng.randrange(len(current))
            end = min(len(current), start + rng.randint(1, 4))
            del text[len(current[:start].encode()) : len(current[:end].encode())]
        else:
            peer.get("meta", type=Map)[rng.choice("abc")] = rng.choice([1, "x", True, None])
        if rng.random() < 0.5:
            for other in peers:
                if other is not peer:
                    other.apply_update(peer.get_update(other.get_state()))
    for one in peers:
        for other in peers:
            other.apply_update(one.get_update(other.get_state()))
    return peers[0].get_update(), updates


def edits_on(state: bytes, seed: int, count: int) -> list[bytes]:
    """``count`` edits a peer makes on the document ``state`` (new to a server that has
    ``state``: mutated, they reach further than mutations of what it already has)."""
    rng = random.Random(seed)
    peer: Doc[Any] = Doc(client_id=rng.randrange(1, 2**32))
    peer.apply_update(state)
    text = peer.get("content", type=Text)
    updates: list[bytes] = []
    peer.observe(lambda event: updates.append(event.update))
    for _ in range(count):
        current = str(text)
        if current and rng.random() < 0.3:
            start = rng.randrange(len(current))
            end = min(len(current), start + rng.randint(1, 3))
            del text[len(current[:start].encode()) : len(current[:end].encode())]
        else:
            at = rng.randint(0, len(current))
            text.insert(len(current[:at].encode()), rng.choice(["b", " word", "ü", "😀"]))
    return updates


SESSION_STATE, SESSION_UPDATES = editing_session(SEED)
CORPUS: list[bytes] = [
    *SESSION_UPDATES,
    SESSION_STATE,
    *edits_on(SESSION_STATE, SEED, 20),
    from_hex(POISON["target"]),
    from_hex(POISON["poison"]),
    *edits_on(from_hex(POISON["target"]), SEED, 20),
    *(from_hex(case["update"]) for case in FOUND),
]


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    # Mostly a byte nudged by one: a clock, a length or a client id off by one keeps
    # an update well formed more often than the other mutations do.
    kind = rng.choices(range(8), weights=[1, 1, 1, 1, 1, 1, 1, 3])[0]
    if kind == 7 and out:  # a byte nudged
        at = rng.randrange(len(out))
        out[at] = (out[at] + rng.choice((-1, 1))) % 256
    elif kind == 0 and out:  # bits flipped
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == 1 and out:  # a byte set
        out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == 2 and out:  # truncated
        del out[rng.randrange(len(out)) :]
    elif kind == 3:  # spliced: the head of this one, the tail of another
        other = rng.choice(CORPUS)
        out = out[: rng.randint(0, len(out))] + other[rng.randint(0, len(other)) :]
    elif kind == 4 and out:  # a varint blown up
        at = rng.randrange(len(out))
        huge = rng.choice([2**31, 2**32 - 1, 2**53, 2**63, 2**64 - 1, 2**70, rng.randrange(2**40)])
        out[at : at + 1] = varint(huge)
    elif kind == 5:  # bytes inserted
        at = rng.randint(0, len(out))
        out[at:at] = rng.randbytes(rng.randint(1, 8))
    else:  # random bytes
        out = bytearray(rng.randbytes(rng.randint(0, 64)))
    return bytes(out)


def fuzzed(rng: random.Random, count: int) -> Iterator[Any]:
    """``count`` payloads for ``sync-update``: mostly bytes, a few of other types, and
    one over the size limit."""
    oversized = rng.randrange(count)
    for i in range(count):
        roll = rng.random()
        if i == oversized:
            yield rng.randbytes(MAX_UPDATE_BYTES + 1)
        elif roll < 0.02:
            yield rng.choice(["00", {"update": "0000"}, [0, 0], 7, None, True])
        elif roll < 0.1:
            yield rng.choice(CORPUS)  # as sent before: a replay
        else:
            update = rng.choice(CORPUS)
            for _ in range(rng.choices((1, 2, 3), weights=(6, 3, 1))[0]):
                update = mutate(rng, update)
            yield update


# --- clients ---------------------------------------------------------------------------


class RawClient:
    """A document connection that sends whatever it is given (python-socketio, no Yjs
    document of its own); it answers the server's sync request with nothing."""

    def __init__(self, url: str, user: User, document_id: str) -> None:
        self.url = url
        self.token = user.access_token
        self.namespace = f"/yjs|{document_id}"
        self.errors: list[dict[str, Any]] = []
        self.refusals = 0  # the errors it should have been sent
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sio.on("sync-step-1", self._sync_step_1, namespace=self.namespace)
        self.sio.on("error", self.errors.append, namespace=self.namespace)

    @staticmethod
    def _sync_step_1(state_vector: bytes) -> bytes:
        return EMPTY_UPDATE

    async def connect(self) -> None:
        await self.sio.connect(
            self.url,
            namespaces=[self.namespace],
            transports=["websocket"],
            auth={"token": self.token},
            wait_timeout=WAIT,
        )

    async def send(self, update: Any) -> None:
        await self.sio.emit("sync-update", update, namespace=self.namespace)

    async def round_trip(self) -> None:
        """A sync request answered: the server has read what was sent before it (each
        event is then handled in a task of its own: not necessarily done with)."""
        answer = await self.sio.call("sync-step-1", b"\x00", namespace=self.namespace, timeout=WAIT)
        assert isinstance(answer, bytes)

    async def close(self) -> None:
        await self.sio.shutdown()


@pytest.fixture
async def clients() -> AsyncIterator[AsyncExitStack]:
    """Connections opened for a test, all closed when it ends."""
    async with AsyncExitStack() as stack:
        yield stack


async def raw_client(stack: AsyncExitStack, url: str, user: User, doc_id: str) -> RawClient:
    raw = RawClient(url, user, doc_id)
    stack.push_async_callback(raw.close)
    await raw.connect()
    return raw


async def document_client(
    stack: AsyncExitStack, url: str, user: User, doc_id: str, client_id: int
) -> DocumentClient:
    """A synced DocumentClient; its Yjs client id fixed, so that its edits are the same
    items from run to run."""
    doc: Doc[Any] = Doc(client_id=client_id)
    client = DocumentClient(url, user.access_token, doc_id, doc=doc, reconnection=False)
    stack.push_async_callback(client.close)
    await client.connect()
    await asyncio.wait_for(client.synced.wait(), WAIT)
    return client


async def people(api: Api) -> tuple[User, User, User]:
    """ann owns the documents, ben edits them, cat views them."""
    return await api.user("ann"), await api.user("ben"), await api.user("cat")


async def shared_document(api: Api, ann: User, ben: User, cat: User) -> str:
    doc = await api.document(ann)
    await api.share(ann, doc["id"], ben, "editor")
    await api.share(ann, doc["id"], cat, "viewer")
    return str(doc["id"])


def has(client: DocumentClient, snippet: str) -> None:
    assert snippet in client.text, (snippet, client.text[-200:])


def text_is(client: DocumentClient, text: str) -> None:
    assert client.text == text, (client.text[-200:], text[-200:])


def count_is(items: list[Any], count: int) -> None:
    assert len(items) == count, items


def doc_of(*updates: bytes) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc


def content_path(doc_id: str) -> str:
    return f"/api/v1/documents/{doc_id}/content"


async def rest_append(api: Api, user: User, doc_id: str, text: str) -> None:
    await api.call("POST", content_path(doc_id), user=user, json={"text": text, "mode": "append"})


# --- in process: every refusal is coded, the log stays loadable -------------------------


async def outcomes(api: Api) -> Counter[str]:
    """``yjs_updates_total`` by outcome (applied, unchanged, or an error code)."""
    response = await api.client.get("/metrics")
    text = await response.text()
    found = re.findall(r'^yjs_updates_total\{outcome="([^"]+)"\} (\S+)$', text, re.MULTILINE)
    return Counter({outcome: int(float(value)) for outcome, value in found})


async def counted(api: Api, before: Counter[str], count: int) -> Counter[str]:
    """Wait until ``count`` more updates have been counted since ``before``; by outcome.
    (Each event is handled in a task of its own: an update is counted once stored, which
    can be after later events of its connection were answered.)"""

    async def settled() -> Counter[str]:
        delta = await outcomes(api)
        delta.subtract(before)
        assert delta.total() >= count, (delta, count)
        return +delta

    delta = await eventually(settled, timeout=WAIT, interval=0.002)
    assert delta.total() == count, (delta, count)
    return delta


async def send_and_answer(api: Api, fuzz: RawClient, update: Any) -> str:
    """Send ``update``; the outcome the server counted for it (waited for: a hang fails
    here), a refusal checked to have been told to the sender with its code."""
    assert len(fuzz.errors) == fuzz.refusals, fuzz.errors[fuzz.refusals :]
    before = await outcomes(api)
    await fuzz.send(update)
    [outcome] = await counted(api, before, 1)
    if outcome not in ("applied", "unchanged"):
        assert outcome in REFUSALS, (outcome, update)
        fuzz.refusals += 1
        await eventually(partial(count_is, fuzz.errors, fuzz.refusals), timeout=WAIT)
        error = fuzz.errors[-1]
        assert error["code"] == outcome and error["event"] == "sync-update", error
        assert error["message"]
    # A successful update (this empty one) clears what the connection was told, so that
    # the next refusal is told too (the server tells each kind once).
    before = await outcomes(api)
    await fuzz.send(EMPTY_UPDATE)
    assert await counted(api, before, 1) == Counter(unchanged=1)
    return outcome


async def stored_as_in_memory(api: Api, doc_id: str) -> str:
    """Built from storage, the document is the one in memory, nothing left out; its text."""
    document_id = uuid.UUID(doc_id)
    async with api.client.app[SESSIONS]() as session:
        stored = await crdt_repo.load(session, document_id)
    rebuilt, skipped = build_document(stored)
    live = api.client.app[LIVE_DOCUMENTS].loaded(document_id)
    assert live is not None
    assert skipped == []
    assert text_of(rebuilt) == str(live.text)
    assert state_vector(rebuilt.get_state()) == state_vector(live.doc.get_state())
    return str(live.text)


async def fuzz_in_process(
    api: Api,
    stack: AsyncExitStack,
    users: tuple[User, User, User],
    base: bytes,
    rng: random.Random,
) -> Counter[str]:
    """One document with ``base`` as its content, fuzzed by an editor (and a viewer);
    how its updates were answered."""
    ann, ben, cat = users
    doc_id = await shared_document(api, ann, ben, cat)
    url = str(api.client.make_url("/")).rstrip("/")
    fuzz = await raw_client(stack, url, ben, doc_id)
    viewer = await raw_client(stack, url, cat, doc_id)
    writer = await document_client(stack, url, ann, doc_id, 1001)
    observer = await document_client(stack, url, ben, doc_id, 1002)
    await fuzz.send(base)  # the real content, sent as a client sends it
    await eventually(partial(has, observer, text_of(doc_of(base))), timeout=WAIT)

    answers: Counter[str] = Counter()
    acknowledged: list[str] = []
    for step, update in enumerate(fuzzed(rng, IN_PROCESS_UPDATES)):
        outcome = await send_and_answer(api, fuzz, update)
        answers[outcome] += 1
        if outcome in REFUSALS or step % 25 == 0:
            await stored_as_in_memory(api, doc_id)
        if step % 10 == 0:  # a viewer's try: refused, or nothing new for the document
            before = await outcomes(api)
            await viewer.send(update)
            await viewer.round_trip()  # a viewer's update is judged without waiting
            delta = await outcomes(api) - before
            assert delta.total() <= 1 and set(delta) <= {"read_only", "invalid_update"}, delta
        if step % 10 == 5:  # a good edit, acknowledged by its relay to the observer
            marker = f"<w{step}>"
            before = await outcomes(api)
            append(writer, marker)
            await eventually(partial(has, observer, marker), timeout=WAIT)
            acknowledged.append(marker)
            assert await counted(api, before, 1) == Counter(applied=1)
        if step % 25 == 12:  # a REST edit, acknowledged by its answer
            marker = f"<r{step}>"
            await rest_append(api, ann, doc_id, marker)
            acknowledged.append(marker)

    assert {error["code"] for error in viewer.errors} <= {"read_only", "invalid_update"}
    text = await stored_as_in_memory(api, doc_id)
    assert (await api.call("GET", content_path(doc_id), user=ann))["text"] == text
    assert [marker for marker in acknowledged if marker not in text] == []
    await eventually(partial(text_is, observer, text), timeout=WAIT)  # all it was sent
    fresh = await document_client(stack, url, ann, doc_id, 1003)
    assert fresh.text == text  # what a sync answer holds
    assert observer.errors == writer.errors == fresh.errors == []
    return answers


async def test_fuzzed_updates_are_refused_with_a_code_and_leave_the_log_loadable(
    start_app: AppFactory, clients: AsyncExitStack
) -> None:
    # No snapshot during the test: what is stored is the log, read while nothing writes.
    client = await start_app(
        **UNLIMITED,
        yjs_max_update_bytes=MAX_UPDATE_BYTES,
        yjs_snapshot_debounce_seconds=3600,
        yjs_snapshot_max_delay_seconds=3600,
    )
    api = Api(client)
    users = await people(api)
    rng = random.Random(SEED)
    answers: Counter[str] = Counter()
    for base in (SESSION_STATE, from_hex(POISON["target"])):
        answers += await fuzz_in_process(api, clients, users, base, rng)
    # The fuzz reached both sides: updates applied, and refusals of each kind.
    assert answers["applied"] > 0 and answers["unchanged"] > 0
    assert answers["invalid_update"] > 0 and answers["update_too_large"] > 0


# --- the harmful updates found so far, each in a group commit with a good edit -----------


async def harmed(start_app: AppFactory, case: dict[str, str]) -> tuple[Api, User, str, str]:
    """A document with the case's target, then its update and good edit submitted in the
    same turn (stored by one group commit): (api, its owner, its id, the text expected:
    the three applied one by one, or without the update if it was refused)."""
    client = await start_app()
    api = Api(client)
    ann = await api.user("ann")
    doc_id = str((await api.document(ann))["id"])
    documents = client.app[LIVE_DOCUMENTS]
    target, update, good = (
        from_hex(case["target"]),
        from_hex(case["update"]),
        from_hex(case["good"]),
    )
    async with documents.opened(uuid.UUID(doc_id)) as live:
        assert await documents.submit(live, target, origin=None)
        crafted, edited = await asyncio.gather(
            documents.submit(live, update, origin=None),
            documents.submit(live, good, origin=None),
            return_exceptions=True,
        )
        assert edited is True
        if isinstance(crafted, BaseException):
            assert isinstance(crafted, InvalidUpdate), crafted
            expected = text_of(doc_of(target, good))
        else:
            expected = text_of(doc_of(target, update, good))
        assert str(live.text) == expected
    return api, ann, doc_id, expected


@pytest.mark.parametrize("case", FOUND, ids=[case["name"] for case in FOUND])
async def test_a_harmful_update_found_by_fuzzing_loses_nothing_stored(
    start_app: AppFactory, case: dict[str, str]
) -> None:
    api, ann, doc_id, expected = await harmed(start_app, case)
    await stored_as_in_memory(api, doc_id)
    # Saved (a snapshot, if it rebuilds the document) and dropped, as at shutdown; the
    # next read loads it from storage.
    await api.client.app[LIVE_DOCUMENTS].close_all()
    assert (await api.call("GET", content_path(doc_id), user=ann))["text"] == expected
    await stored_as_in_memory(api, doc_id)


SURROGATE_SPLIT = pytest.mark.xfail(
    strict=True,
    reason="not fixed: yrs (pycrdt 0.14.13) splits the string between the two halves of "
    "the surrogate pair, and the document's encoding no longer decodes to the document it "
    "holds; only the snapshot is refused (the log keeps every edit)",
)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            case,
            id=case["name"],
            marks=[SURROGATE_SPLIT] if "surrogate" in case["name"] else [],
        )
        for case in FOUND
    ],
)
async def test_after_a_harmful_update_a_sync_answer_is_the_document(
    start_app: AppFactory, case: dict[str, str]
) -> None:
    api, ann, doc_id, expected = await harmed(start_app, case)
    # What a fresh client is sent: the document as one update.
    response = await api.client.get(f"{content_path(doc_id)}?format=yjs", headers=ann.headers)
    assert response.status == 200
    assert text_of(doc_of(await response.read())) == expected


async def test_what_waited_for_a_dependency_is_relayed_once_it_is_applied(
    start_app: AppFactory, clients: AsyncExitStack
) -> None:
    """Found by the fuzz: an update whose dependency is missing changes nothing, so it
    was not relayed; once the dependency came, only the dependency was, and the other
    connections never had the first. (Out of order without crafting: edits that reach
    the server by another path first, as with a second provider.)"""
    client = await start_app(**UNLIMITED)
    api = Api(client)
    ann, ben, cat = await people(api)
    doc_id = await shared_document(api, ann, ben, cat)
    url = str(client.make_url("/")).rstrip("/")
    sender = await raw_client(clients, url, ben, doc_id)
    observer = await document_client(clients, url, cat, doc_id, 1002)
    author: Doc[Any] = Doc(client_id=77)
    updates: list[bytes] = []
    author.observe(lambda event: updates.append(event.update))
    text = author.get("content", type=Text)
    text += "first, "
    text += "then second"
    before = await outcomes(api)
    await sender.send(updates[1])  # waits in the server's copy: nothing changes
    assert await counted(api, before, 1) == Counter(unchanged=1)
    await sender.send(updates[0])
    await eventually(partial(text_is, observer, "first, then second"), timeout=WAIT)
    body = await api.call("GET", content_path(doc_id), user=ann)
    assert body["text"] == "first, then second"


# --- a server process: fuzzed, killed, started again ------------------------------------


async def stored_of(database_url: str, doc_id: str) -> StoredDocument:
    """What the server's database holds of the document (read as a load reads it)."""
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            return await crdt_repo.load(session, uuid.UUID(doc_id))
    finally:
        await engine.dispose()


async def stored_text(database_url: str, doc_id: str) -> str:
    """The text as the killed server's database has it (built as a load builds it)."""
    # An update stored when the kill came may be left out.
    doc, _ = build_document(await stored_of(database_url, doc_id))
    return text_of(doc)


async def compacted(database_url: str, doc_id: str) -> None:
    """A snapshot holds the document (and the log what came after it, what waits for a
    dependency, and all of it while a split surrogate pair keeps snapshots out)."""
    assert (await stored_of(database_url, doc_id)).snapshot is not None


async def at_least_counted(api: Api, count: int) -> None:
    total = (await outcomes(api)).total()
    assert total >= count, (total, count)


async def test_after_a_kill_every_document_loads_with_every_acknowledged_edit(
    server: Server, clients: AsyncExitStack
) -> None:
    server.env.update(
        YJS_MESSAGES_PER_SECOND="1000000",
        YJS_MESSAGE_BURST="1000000",
        YJS_MAX_UPDATE_BYTES=str(MAX_UPDATE_BYTES),
        # Snapshots while it is fuzzed: a load reads a snapshot and a log.
        YJS_SNAPSHOT_DEBOUNCE_SECONDS="0.1",
        YJS_SNAPSHOT_MAX_DELAY_SECONDS="0.5",
    )
    await server.start()
    rng = random.Random(SEED + 1)
    async with aiohttp.ClientSession(base_url=server.base) as http:
        # Api speaks to any client with TestClient's request(); a session with a base
        # URL is one.
        api = Api(cast(TestClient[web.Request, web.Application], http))
        ann, ben, cat = await people(api)
        bases = [SESSION_STATE, from_hex(POISON["target"]), None]  # None: typed only
        # ann writes, ben fuzzes, cat (a viewer) observes.
        doc_ids = [await shared_document(api, ann, ben, cat) for _ in bases]
        fuzzers, writers, observers = [], [], []
        for doc_id, base in zip(doc_ids, bases, strict=True):
            fuzzers.append(await raw_client(clients, server.base, ben, doc_id))
            writers.append(await document_client(clients, server.base, ann, doc_id, 1001))
            observers.append(await document_client(clients, server.base, cat, doc_id, 1002))
            if base is not None:
                await fuzzers[-1].send(base)
                await eventually(partial(has, observers[-1], text_of(doc_of(base))))

        acknowledged: dict[str, list[str]] = {doc_id: [] for doc_id in doc_ids}
        for round_ in range(KILL_ROUNDS):
            for doc_id, fuzz, writer, observer in zip(
                doc_ids, fuzzers, writers, observers, strict=True
            ):
                for update in fuzzed(rng, KILL_UPDATES_PER_ROUND):
                    await fuzz.send(update)
                marker = f"<w{round_}>"
                append(writer, marker)
                if round_ % 2:
                    await rest_append(api, ann, doc_id, f"<r{round_}>")
                    acknowledged[doc_id].append(f"<r{round_}>")
                await eventually(partial(has, observer, marker), timeout=WAIT)
                acknowledged[doc_id].append(marker)
            for fuzz in fuzzers:
                await fuzz.round_trip()
            if round_ == KILL_ROUNDS // 2:  # once quiet, a snapshot is taken
                for doc_id in doc_ids:
                    await eventually(
                        partial(compacted, server.env["DATABASE_URL"], doc_id), timeout=WAIT
                    )
        # Every update sent was answered (an update is counted once handled): none hangs.
        # The answers of the fuzzer and the writer to the server's sync request (the
        # viewer's carries nothing new: not counted), the two bases, then per round and
        # document the fuzzed updates and the writer's edit.
        sent = 2 * len(doc_ids) + 2 + KILL_ROUNDS * len(doc_ids) * (KILL_UPDATES_PER_ROUND + 1)
        await eventually(partial(at_least_counted, api, sent), timeout=WAIT)
        for fuzz in fuzzers:
            assert {error["code"] for error in fuzz.errors} <= REFUSALS, fuzz.errors
        assert [client.errors for client in writers + observers] == [[]] * len(writers + observers)

        # What the server holds: every acknowledged edit, but for what an accepted
        # update of the fuzzing editor deleted (a deletion may name items not written
        # yet, and takes effect when they arrive, as in any Yjs peer).
        held = {
            doc_id: (await api.call("GET", content_path(doc_id), user=ann))["text"]
            for doc_id in doc_ids
        }
        await server.kill()  # at once: whatever was in flight is in flight
        database = server.env["DATABASE_URL"]
        stored = {doc_id: await stored_text(database, doc_id) for doc_id in doc_ids}
        await server.start()  # the same port and database

        for doc_id in doc_ids:
            body = await asyncio.wait_for(api.call("GET", content_path(doc_id), user=ann), WAIT)
            text = body["text"]
            # Not compared whole with `held` or `stored`: where a fuzzed update split a
            # surrogate pair, yrs' copy in memory differs from what its log replays to
            # (docs/protocol.md §6.5, the xfails above), and the crafted structs that
            # wait in the log are integrated in an order that varies between processes.
            kept = [marker for marker in acknowledged[doc_id] if marker in held[doc_id]]
            assert len(kept) >= len(acknowledged[doc_id]) // 2, (kept, acknowledged[doc_id])
            assert [marker for marker in kept if marker not in stored[doc_id]] == []
            assert [marker for marker in kept if marker not in text] == []
            fresh = await document_client(clients, server.base, ann, doc_id, 1003)
            # Its sync answer comes from the document's encoding (the same caveat).
            assert [marker for marker in kept if marker not in fresh.text] == []
