"""How often a Yjs update is decoded (issue 12, point 4): an accepted edit is applied
twice (a scratch document, then the live one) and diffed never; a viewer's sync answer
is judged without encoding the document again while it is unchanged; an update merged
for many slow readers is merged once for all of them, and they converge.

Counted by wrapping pycrdt's entry points that decode an update: ``Doc.apply_update``,
``get_update(update, state)`` (a diff) and ``merge_updates``; ``Doc.get_update`` is
counted too (an encoding of a document).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pycrdt
import pytest
from pycrdt import Decoder, Doc, Encoder, Text, TransactionEvent

import app.services.yjs_updates as yjs_updates
import realtime.delivery.merging as merging
from app.errors import InvalidUpdate
from app.events import EventClass
from app.services.live_documents import LiveDocument, LiveDocuments
from app.services.yjs_updates import check_update
from realtime.delivery import Event
from realtime.delivery.merging import merge
from tests.conftest import AppFactory, NodePrograms, OpenDocumentOn
from tests.helpers import Api, eventually
from tests.test_delivery_outbox import Recorder, send
from tests.test_delivery_slow import websockets_of
from tests.yjs_js import YjsJsClient
from tests.yjs_support import live_documents, uuid_of

WAIT = 10.0  # seconds a convergence may take


@contextmanager
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Calls of pycrdt's decoding entry points (and of a document's encoding) made
    while the block runs, by name."""
    calls: Counter[str] = Counter()

    def wrap(owner: Any, name: str, label: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls[label] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counting)

    wrap(pycrdt.Doc, "apply_update", "apply")
    wrap(pycrdt.Doc, "get_update", "encode")
    wrap(yjs_updates, "get_update", "diff")
    wrap(merging, "merge_updates", "merge")
    with monkeypatch.context():
        yield calls


class Author:
    """A Yjs peer: its edits as the updates its transactions emit (what a provider sends)."""

    def __init__(self, client_id: int, state: bytes | None = None) -> None:
        self.doc: Doc[Any] = Doc(client_id=client_id)
        if state is not None:
            self.doc.apply_update(state)
        self.sent: list[tuple[bytes, bytes]] = []  # (update, its delete set)
        self.doc.observe(self._emitted)

    def _emitted(self, event: TransactionEvent) -> None:
        self.sent.append((event.update, event.delete_set))  # type: ignore[attr-defined]

    @property
    def text(self) -> Text:
        text: Text = self.doc.get("content", type=Text)
        return text

    def insert(self, index: int, chunk: str) -> bytes:
        """Insert ``chunk`` at the UTF-8 byte ``index``; the update sent."""
        self.text.insert(index, chunk)
        return self.sent[-1][0]

    def delete(self, start: int, end: int) -> bytes:
        del self.text[start:end]
        return self.sent[-1][0]


def typed_together() -> bytes:
    """A document's state: text by two authors, interleaved, with a deletion."""
    ann, ben = Author(11), Author(12)
    ann.insert(0, "Hello, world. " * 20)
    ben.doc.apply_update(ann.doc.get_update())
    ben.insert(7, "dear ")
    ann.doc.apply_update(ben.doc.get_update(ann.doc.get_state()))
    ann.delete(30, 40)
    return ann.doc.get_update()


def reordered_delete_set(update: bytes, deleted: bytes) -> bytes:
    """``update`` with its delete set's clients written in the reverse order (as Yjs
    writes them where yrs sorts): the same update, other bytes."""
    decoder = Decoder(deleted)
    clients = []
    for _ in range(decoder.read_var_uint()):
        client = decoder.read_var_uint()
        ranges = [
            (decoder.read_var_uint(), decoder.read_var_uint())
            for _ in range(decoder.read_var_uint())
        ]
        clients.append((client, ranges))
    assert len(clients) > 1
    encoder = Encoder()
    encoder.write_var_uint(len(clients))
    for client, ranges in reversed(clients):
        encoder.write_var_uint(client)
        encoder.write_var_uint(len(ranges))
        for clock, length in ranges:
            encoder.write_var_uint(clock)
            encoder.write_var_uint(length)
    return update[: len(update) - len(deleted)] + encoder.to_bytes()


async def submitted(
    documents: LiveDocuments, live: LiveDocument, updates: list[bytes], calls: Counter[str]
) -> Counter[str]:
    """The calls counted while ``updates`` are submitted one after another."""
    calls.clear()
    for update in updates:
        assert await documents.submit(live, update, origin=None) is True
    return +calls


async def test_an_accepted_edit_is_applied_twice_and_not_diffed(
    start_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = Api(await start_app())
    _, _, doc = await api.room("editor")
    documents = live_documents(api)
    state = typed_together()
    async with documents.opened(uuid_of(doc)) as live:
        assert await documents.submit(live, state, origin=None)
        cat = Author(13, state)
        with counted(monkeypatch) as calls:
            # A keystroke, another one, a backspace: each waits in the scratch
            # document for what it edits, and is applied to the live one whole.
            keystrokes = [
                cat.insert(20, "x"),
                cat.insert(21, "yz"),
                cat.delete(21, 22),
            ]
            assert await submitted(documents, live, keystrokes, calls) == {"apply": 6}

            # A deletion across two authors' text: yrs' transaction writes its delete
            # set in another client order than this update (as Yjs' would be).
            cat.delete(2, 12)
            update, deleted = cat.sent[-1]
            reordered = reordered_delete_set(update, deleted)
            assert reordered != update
            assert await submitted(documents, live, [reordered], calls) == {"apply": 2}

            # The first edit of an empty text integrates in the scratch document too,
            # whose encoding is then checked (decoded into a copy): one apply more.
            fresh = Author(14)
            first = fresh.insert(0, "new")
            assert await submitted(documents, live, [first], calls) == {
                "apply": 3,
                "encode": 1,
            }
        reference: Doc[Any] = Doc()
        for update in [state, *keystrokes, reordered, first]:
            reference.apply_update(update)
        assert str(live.text) == str(reference.get("content", type=Text))
        assert live.waiting == []

        # What waits for a dependency is still found (by a diff: the transaction
        # changed nothing), and let in when the dependency comes.
        dan = Author(15, live.doc.get_update())
        before = len(dan.sent)
        dan.insert(0, "a")
        dan.insert(1, "b")
        needed, waiting = dan.sent[before][0], dan.sent[before + 1][0]
        assert await documents.submit(live, waiting, origin=None) is False
        assert live.waiting == [waiting]
        assert await documents.submit(live, needed, origin=None) is True
        assert live.waiting == [] and str(live.text).startswith("ab")


def test_a_crafted_update_is_still_checked_through_its_encoding() -> None:
    """gc-past-a-gap (tests/data/yjs_fuzz_found.json): it integrates in an empty
    document (yrs lists its client at clock 0), so its encoding is checked."""
    with pytest.raises(InvalidUpdate):
        check_update(bytes.fromhex("0104080700cd9285ed0d00010acd9285ed0d000d00"), 1 << 20)


async def test_a_viewers_answer_is_judged_without_encoding_the_document_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server: Doc[Any] = Doc()
    live = LiveDocument(uuid.uuid4(), doc=server)
    ann = Author(21)
    server.apply_update(ann.insert(0, "hello world"))
    server.apply_update(ann.delete(0, 2))
    viewer: Doc[Any] = Doc()
    viewer.apply_update(server.get_update())
    answer = viewer.get_update(server.get_state())  # no structs, its whole delete set
    with counted(monkeypatch) as calls:
        assert not live.would_change(answer)
        assert not live.would_change(answer)
        assert calls == {"diff": 2, "encode": 1}  # the delete set read once
        # An edit: the next answer reads it again.
        live._apply(ann.delete(0, 2))
        calls.clear()
        assert live.would_change(answer) is False
        assert calls["encode"] == 1
    deleting: Doc[Any] = Doc()
    deleting.apply_update(server.get_update())
    del deleting.get("content", type=Text)[0:3]
    assert live.would_change(deleting.get_update(server.get_state()))


def test_an_update_merged_for_many_slow_readers_is_merged_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder()
    readers = [recorder.outbox(max_bytes=1 << 20) for _ in range(20)]  # none attached
    author = Author(31)
    updates = [author.insert(0, f"<{i}>") for i in range(5)]
    document_id = uuid.uuid4()
    with counted(monkeypatch) as calls:
        for update in updates:
            event = Event("sync-update", update, EventClass.DOCUMENT, key=document_id)
            for reader in readers:
                send(reader, event)
        assert calls == {"merge": 4}  # one per broadcast after the first, not per reader
    waiting = {id(item.event) for reader in readers for item in reader._queue if item.live}
    assert len(waiting) == 1
    [merged] = {item.event for item in readers[0]._queue if item.live}
    assert merged is not None
    copy: Doc[Any] = Doc()
    copy.apply_update(merged.data)
    assert str(copy.get("content", type=Text)) == str(author.text)
    assert recorder.count("merged", EventClass.DOCUMENT) == 4 * len(readers)


def test_merging_the_same_two_events_again_merges_again() -> None:
    """What is kept is only the newest event's merges, and only for the same objects."""
    author = Author(41)
    first, second, third = (author.insert(0, c) for c in "abc")
    key = uuid.uuid4()
    a, b, c = (
        Event("sync-update", u, EventClass.DOCUMENT, key=key) for u in (first, second, third)
    )
    ab = merge(a, b)
    assert merge(a, b) is ab
    ac = merge(a, c)
    assert merge(a, b) is not ab  # another newer event came between
    assert merge(a, c) is not ac and merge(a, c).data == ac.data


@pytest.mark.slow
async def test_providers_behind_share_merged_updates_and_converge(
    start_app: AppFactory,
    open_document_on: OpenDocumentOn,
    node_programs: NodePrograms,
) -> None:
    """Two y-socket.io providers fall behind at the same moment (their transports
    full: the outboxes paused as asyncio's pause_writing pauses them); what waits for
    them is one merged update for both, which both apply when they are written to."""
    client = await start_app(yjs_message_burst=1000)
    api = Api(client)
    owner, member, doc = await api.room()
    url = str(client.make_url("/")).rstrip("/")
    providers = [await node_programs(YjsJsClient, url) for _ in range(2)]
    for provider in providers:
        await provider.synced_as(doc["id"], member.access_token)
    connections = websockets_of(client)
    assert len(connections) == 2
    writer = await open_document_on(client, owner, doc["id"])
    writer.edit(lambda text: text.insert(0, "start "))
    for provider in providers:
        await provider.wait_text(writer.text)

    for connection in connections:
        connection.outbox.pause()
    for i in range(30):

        def typed(text: Text, i: int = i) -> None:
            text.insert(len(text) // 2, f"<{i:02d}>")

        writer.edit(typed)
        await asyncio.sleep(0.005)

    async def stored() -> None:
        body = await api.call("GET", f"/api/v1/documents/{doc['id']}/content", user=owner)
        assert body["text"] == writer.text

    await eventually(stored, timeout=WAIT)
    waiting = [
        item.event
        for connection in connections
        for item in connection.outbox._queue
        if item.live and item.event is not None and item.event.kind is EventClass.DOCUMENT
    ]
    assert len(waiting) == 2 and waiting[0] is waiting[1]  # one merged update for both
    for connection in connections:
        connection.outbox.resume()
    for provider in providers:
        assert await provider.wait_text(writer.text, within=WAIT) == writer.text
