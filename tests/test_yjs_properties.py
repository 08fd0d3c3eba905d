"""Property: however clients interleave edits, sends and deliveries, every replica
converges with the server's copy and with what is stored.

Several replicas (pycrdt documents, as the providers hold) edit the text with random
Unicode at random places. Their updates reach the server's ``LiveDocuments`` in random
batches, concurrently (so group commits and snapshots interleave with writes), and
the server's broadcasts reach each replica after random delays. At the end the log
and snapshot in the database are loaded by a fresh ``LiveDocuments``, as a
restarted server would.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Decoder, Doc, Text, TransactionEvent

from app.events import NullBroadcaster
from app.services.live_documents import TEXT_NAME, Limits, LiveDocuments
from app.services.text_edits import TextEdit, apply_edit
from storage.db import create_engine, create_sessionmaker
from storage.models import GlobalRole
from storage.repositories import documents as documents_repo
from storage.repositories import users as users_repo
from tests.conftest import run_blocking

PIECES = ["a", "b", " ", "é", "e\u0301", "中", "😀", "\n"]
PEERS = 3

edits = st.tuples(
    st.just("edit"),
    st.integers(0, PEERS - 1),
    st.floats(0, 1),
    st.floats(0, 1),
    st.lists(st.sampled_from(PIECES), max_size=4).map("".join),
)
sends = st.tuples(st.just("send"), st.integers(0, PEERS - 1))
deliveries = st.tuples(st.just("deliver"), st.integers(0, PEERS - 1), st.integers(1, 4))
pauses = st.tuples(st.just("pause"))
steps = st.lists(st.one_of(edits, edits, sends, deliveries, pauses), min_size=1, max_size=40)


@dataclass(eq=False)
class Peer:
    name: str
    doc: Doc[Any] = field(default_factory=Doc)
    outbox: list[bytes] = field(default_factory=list)
    inbox: list[bytes] = field(default_factory=list)
    applying: bool = False

    def __post_init__(self) -> None:
        self.doc.observe(self._changed)

    def _changed(self, event: TransactionEvent) -> None:
        if not self.applying:
            self.outbox.append(event.update)

    @property
    def text(self) -> Text:
        text: Text = self.doc.get(TEXT_NAME, type=Text)
        return text

    def edit(self, a: float, b: float, insert: str) -> None:
        length = len(str(self.text))
        start, end = sorted((round(a * length), round(b * length)))
        apply_edit(self.text, TextEdit(start, end, insert))

    def deliver(self, count: int) -> None:
        for update in self.inbox[:count]:
            self.applying = True
            try:
                self.doc.apply_update(update)
            finally:
                self.applying = False
        del self.inbox[:count]


def clocks(state_vector: bytes) -> dict[int, int]:
    """A Yjs state vector as {client id: clock} (its encoding does not fix the order)."""
    decoder = Decoder(state_vector)
    pairs = [
        (decoder.read_var_uint(), decoder.read_var_uint()) for _ in range(decoder.read_var_uint())
    ]
    return dict(pairs)


class Relay(NullBroadcaster):
    """The server's broadcasts, queued per replica like sockets would."""

    def __init__(self, peers: list[Peer]) -> None:
        self.peers = peers

    def document_updated(
        self, document_id: uuid.UUID, update: bytes, *, skip_connection: str | None = None
    ) -> None:
        for peer in self.peers:
            if peer.name != skip_connection:
                peer.inbox.append(update)


async def scenario(database_url: str, plan: list[tuple[Any, ...]], debounce: float) -> None:
    engine = create_engine(database_url)
    sessions = create_sessionmaker(engine)
    limits = Limits(
        max_update_bytes=1 << 20,
        max_document_bytes=1 << 24,
        snapshot_debounce=debounce,
        snapshot_max_delay=debounce * 2,
        unload_after=60,
    )
    try:
        async with sessions.begin() as session:
            user = await users_repo.create_user(
                session,
                username=f"p{uuid.uuid4().hex[:8]}",
                password_hash=None,
                role=GlobalRole.USER,
            )
            document = await documents_repo.create_document(session, title="p", owner_id=user.id)
            document_id = document.id
        peers = [Peer(f"peer{i}") for i in range(PEERS)]
        server = LiveDocuments(sessions, Relay(peers), limits)
        live = await server.open(document_id)
        in_flight: list[asyncio.Task[bool]] = []

        def send(peer: Peer) -> None:
            for update in peer.outbox:
                task = asyncio.create_task(server.submit(live, update, origin=peer.name))
                in_flight.append(task)
            peer.outbox.clear()

        for step in plan:
            if step[0] == "edit":
                peers[step[1]].edit(*step[2:])
            elif step[0] == "send":
                send(peers[step[1]])
            elif step[0] == "deliver":
                peers[step[1]].deliver(step[2])
            else:
                await asyncio.sleep(0.001)

        for peer in peers:
            send(peer)
        await asyncio.gather(*in_flight)
        for peer in peers:
            peer.deliver(len(peer.inbox))

        expected = str(live.text)
        assert [str(peer.text) for peer in peers] == [expected] * PEERS
        assert [clocks(peer.doc.get_state()) for peer in peers] == [
            clocks(live.state_vector())
        ] * PEERS
        # A restarted server loads the same document from the log and the snapshot.
        server_copy = str(live.text)
        await server.close_all()
        restarted = LiveDocuments(sessions, NullBroadcaster(), limits)
        async with restarted.opened(document_id) as reloaded:
            assert str(reloaded.text) == server_copy
            assert clocks(reloaded.state_vector()) == clocks(live.state_vector())
        await restarted.close_all()
    finally:
        await engine.dispose()


@settings(
    max_examples=25,
    deadline=None,
    # One database serves every example: each makes a document of its own.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plan=steps, debounce=st.sampled_from([0.0, 0.002, 30.0]))
def test_random_concurrent_edits_converge_with_the_server_and_storage(
    database_url: str, plan: list[tuple[Any, ...]], debounce: float
) -> None:
    run_blocking(scenario(database_url, plan, debounce))
