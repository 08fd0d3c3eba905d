"""The chat writer (group commit) on its own: batches, retries, failures, shutdown.

Each test queues messages in one event-loop turn, so they are committed together,
against the app's real database (SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.principal import Principal
from app.errors import NotFound
from app.keys import CHAT_SERVICE, ENGINE
from app.services.chat_writer import ChatWriter, Pending, Stored, time_ordered_uuids
from app.services.documents import RoomAccess
from storage.chat_batches import BatchWriter, Conflict, NewMessage, batch_writer
from storage.models import AiUsage, AuthorKind, GlobalRole, utcnow
from storage.repositories.usage import NewUsage
from tests.helpers import Api, User, eventually, truthy


class Writer:
    """A ChatWriter over the app's database that records what it announces."""

    def __init__(
        self,
        engine: AsyncEngine,
        max_batch: int = 500,
        batches: BatchWriter | None = None,
        one_trip: bool = True,
        max_known: int = 100,
        linger: float = 0.0,
    ) -> None:
        self.announced: list[Stored] = []
        self.writer = ChatWriter(
            engine,
            lambda message, _skip: self.announced.append(message),
            batches=batches or (batch_writer(engine) if one_trip else None),
            max_batch=max_batch,
            max_known=max_known,
            linger=linger,
        )

    def message(self, user: User, doc_id: str, text: str, msg_id: str | None = None) -> Pending:
        return Pending(
            document_id=uuid.UUID(doc_id),
            author_kind=AuthorKind.USER,
            author_id=uuid.UUID(user.id),
            author_name=user.username,
            text=text,
            client_msg_id=msg_id,
        )

    async def batch(self, *messages: Pending) -> list[Any]:
        """Queue all of them in one turn; each one's outcome (a result or an error)."""
        return await asyncio.gather(
            *(self.writer.write(m) for m in messages), return_exceptions=True
        )


@pytest.fixture(params=["one trip", "sqlalchemy"])
def one_trip(request: pytest.FixtureRequest) -> bool:
    """Batches written by the backend's one-trip writer, or through SQLAlchemy (the
    path of the databases the one-trip writers do not serve)."""
    return bool(request.param == "one trip")


def engine_of(api: Api) -> AsyncEngine:
    return api.client.app[ENGINE]


async def stored(api: Api, user: User, doc_id: str) -> list[tuple[int, str, str | None]]:
    page = await api.call(
        "GET", f"/api/v1/documents/{doc_id}/messages?after=0&limit=100", user=user
    )
    return [(m["seq"], m["text"], m["client_msg_id"]) for m in page["items"]]


async def test_one_batch_takes_the_seqs_of_several_documents_in_order(
    api: Api, one_trip: bool
) -> None:
    ann = await api.user("ann")
    first, second = (await api.document(ann, "one"))["id"], (await api.document(ann, "two"))["id"]
    w = Writer(engine_of(api), one_trip=one_trip)
    texts = [(first, "a1"), (second, "b1"), (first, "a2"), (first, "a3"), (second, "b2")]
    outcomes = await w.batch(*(w.message(ann, doc, text) for doc, text in texts))
    assert [(str(out.document_id), out.seq, new) for out, new in outcomes] == [
        (first, 1, True),
        (second, 1, True),
        (first, 2, True),
        (first, 3, True),
        (second, 2, True),
    ]
    # Announced in the order taken, each once; a join would enter after the last.
    assert [(m.data["text"], m.seq) for m in w.announced] == [
        (t, o[0].seq) for (_, t), o in zip(texts, outcomes, strict=True)
    ]
    assert await w.writer.announced(uuid.UUID(first)) == 3
    assert await stored(api, ann, first) == [(1, "a1", None), (2, "a2", None), (3, "a3", None)]
    assert {uuid.UUID(out.data["id"]).version for out, _ in outcomes} == {7}
    await w.writer.close()


async def test_the_senders_are_answered_before_the_writes_of_the_announcements(
    api: Api,
) -> None:
    # An announcement's first write schedules the turn's flush (outbox.Flusher); the
    # senders resumed before it push their acks into that same write.
    ann = await api.user("ann")
    doc = (await api.document(ann, "one write"))["id"]
    order: list[str] = []
    w = Writer(engine_of(api))
    announce = w.writer._announce

    def announce_and_flush(message: Stored, skip: str | None) -> None:
        if not w.announced:
            asyncio.get_running_loop().call_soon(order.append, "flush")
        announce(message, skip)

    w.writer._announce = announce_and_flush

    async def send(text: str) -> None:
        await w.writer.write(w.message(ann, doc, text))
        order.append(f"ack {text}")

    await asyncio.gather(send("a"), send("b"))
    assert order == ["ack a", "ack b", "flush"]
    assert [m.data["text"] for m in w.announced] == ["a", "b"]
    await w.writer.close()


async def test_a_retry_in_the_same_batch_or_a_later_one_stores_nothing_more(
    api: Api, one_trip: bool
) -> None:
    ann = await api.user("ann")
    doc = (await api.document(ann, "retries"))["id"]
    w = Writer(engine_of(api), one_trip=one_trip)
    (one, new), (again, again_new), (other, _) = await w.batch(
        w.message(ann, doc, "first", "m-1"),
        w.message(ann, doc, "first, sent again", "m-1"),
        w.message(ann, doc, "second", "m-2"),
    )
    assert (new, again_new) == (True, False)
    assert again == one and other.seq == 2
    # A later batch (the first copy committed): found by its key, in a batch whose
    # other messages are stored, with no seq used by the retry.
    outcomes = await w.batch(
        w.message(ann, doc, "third", "m-3"),
        w.message(ann, doc, "first, a third time", "m-1"),
        w.message(ann, doc, "fourth"),
    )
    assert [(out.seq, out.data["text"], new) for out, new in outcomes] == [
        (3, "third", True),
        (1, "first", False),
        (4, "fourth", True),
    ]
    assert outcomes[1][0] == one  # read back, it is what the first copy's sender got
    assert [m.seq for m in w.announced] == [1, 2, 3, 4]
    assert [seq for seq, _, _ in await stored(api, ann, doc)] == [1, 2, 3, 4]
    await w.writer.close()


async def test_a_message_that_cannot_be_stored_is_refused_alone(api: Api, one_trip: bool) -> None:
    ann = await api.user("ann")
    doc = (await api.document(ann, "mixed"))["id"]
    gone = await api.document(ann, "deleted")
    await api.call("DELETE", f"/api/v1/documents/{gone['id']}", user=ann, expect=204)
    w = Writer(engine_of(api), one_trip=one_trip)
    ghost = User(str(uuid.uuid4()), "ghost", "", "")  # no such user: a foreign key fails
    outcomes = await w.batch(
        w.message(ann, doc, "kept 1", "k-1"),
        w.message(ghost, doc, "from nobody", "g-1"),
        w.message(ann, gone["id"], "into a deleted document"),
        w.message(ann, doc, "kept 2", "k-2"),
    )
    assert [out.seq for out, _ in (outcomes[0], outcomes[3])] == [1, 2]
    assert isinstance(outcomes[1], Conflict | IntegrityError)
    assert isinstance(outcomes[2], NotFound)
    # The refused message took no seq: the next one follows without a gap.
    ((after, _),) = await w.batch(w.message(ann, doc, "kept 3"))
    assert after.seq == 3
    assert [seq for seq, _, _ in await stored(api, ann, doc)] == [1, 2, 3]
    assert [m.data["text"] for m in w.announced] == ["kept 1", "kept 2", "kept 3"]
    await w.writer.close()


def spent(document_id: str, user_id: str, tokens: int) -> NewUsage:
    return NewUsage(
        user_id=uuid.UUID(user_id),
        document_id=uuid.UUID(document_id),
        reply_id=uuid.uuid4(),
        model="claude-test",
        status="completed",
        input_tokens=tokens,
        output_tokens=7,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=3,
        cost_usd=Decimal("0.000123"),
        created_at=utcnow(),
    )


async def test_a_reply_and_its_usage_are_stored_together_or_not_at_all(
    api: Api, one_trip: bool
) -> None:
    ann = await api.user("ann")
    doc = (await api.document(ann, "asked"))["id"]
    w = Writer(engine_of(api), one_trip=one_trip)

    def reply(text: str, usage: NewUsage) -> Pending:
        return Pending(
            document_id=uuid.UUID(doc),
            author_kind=AuthorKind.ASSISTANT,
            author_id=None,
            author_name=None,
            text=text,
            usage=usage,
        )

    paid = spent(doc, ann.id, 100)
    unpayable = spent(doc, str(uuid.uuid4()), 200)  # no such user: its usage row fails
    outcomes = await w.batch(
        w.message(ann, doc, "a question"), reply("an answer", paid), reply("unpaid", unpayable)
    )
    assert [out.seq for out, _ in outcomes[:2]] == [1, 2]
    assert isinstance(outcomes[2], Conflict | IntegrityError)
    assert [text for _, text, _ in await stored(api, ann, doc)] == ["a question", "an answer"]
    async with engine_of(api).connect() as connection:
        rows = (
            await connection.execute(
                select(AiUsage.reply_id, AiUsage.input_tokens, AiUsage.cost_usd, AiUsage.model)
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        (paid.reply_id, 100, Decimal("0.000123"), "claude-test")
    ]
    await w.writer.close()


class FailingOnce:
    """A batch writer whose first batch the database refuses (it is away)."""

    def __init__(self, batches: BatchWriter) -> None:
        self.batches = batches
        self.failed = False

    async def insert(
        self, messages: Sequence[NewMessage], created_at: datetime
    ) -> dict[uuid.UUID, int]:
        if not self.failed:
            self.failed = True
            raise OperationalError("INSERT", {}, ConnectionRefusedError("database away"))
        return await self.batches.insert(messages, created_at)

    async def close(self) -> None:
        await self.batches.close()


async def test_a_batch_the_database_refuses_fails_its_senders_and_the_next_one_is_stored(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    ann = await api.user("ann")
    doc = (await api.document(ann, "outage"))["id"]
    engine = engine_of(api)
    w = Writer(engine, batches=FailingOnce(cast(BatchWriter, batch_writer(engine))))
    outcomes = await w.batch(w.message(ann, doc, "lost 1"), w.message(ann, doc, "lost 2"))
    assert all(isinstance(outcome, OperationalError) for outcome in outcomes)
    assert "could not store 2 chat messages" in caplog.text
    ((out, _),) = await w.batch(w.message(ann, doc, "stored"))
    assert out.seq == 1 and [m.data["text"] for m in w.announced] == ["stored"]
    await w.writer.close()


class Recording:
    """A batch writer that records the size of each batch."""

    def __init__(self, batches: BatchWriter) -> None:
        self.batches = batches
        self.sizes: list[int] = []

    async def insert(
        self, messages: Sequence[NewMessage], created_at: datetime
    ) -> dict[uuid.UUID, int]:
        self.sizes.append(len(messages))
        return await self.batches.insert(messages, created_at)

    async def close(self) -> None:
        await self.batches.close()


async def test_after_a_batch_of_several_the_next_waits_for_as_many_and_a_lone_one_never(
    api: Api,
) -> None:
    ann = await api.user("ann")
    doc = (await api.document(ann, "busy"))["id"]
    engine = engine_of(api)
    recording = Recording(cast(BatchWriter, batch_writer(engine)))
    w = Writer(engine, batches=cast(BatchWriter, recording), linger=0.5)

    async def one_by_one(*texts: str) -> list[int]:
        """Each message sent in a turn of its own, a moment after the one before."""
        sends = []
        for text in texts:
            sends.append(asyncio.ensure_future(w.writer.write(w.message(ann, doc, text))))
            await asyncio.sleep(0.01)
        return [out.seq for out, _ in await asyncio.gather(*sends)]

    await w.batch(*(w.message(ann, doc, f"first {n}") for n in range(3)))
    # Three senders answering their acks: stored together, not one at a time.
    assert await one_by_one("again 0", "again 1", "again 2") == [4, 5, 6]
    assert recording.sizes == [3, 3]
    # The burst is over: one message waits out the linger, then none waits.
    assert await one_by_one("late") == [7]
    assert await one_by_one("later", "last") == [8, 9]
    assert recording.sizes == [3, 3, 1, 1, 1]
    await w.writer.close()


async def test_closing_stores_what_is_queued_and_refuses_what_comes_after(api: Api) -> None:
    ann = await api.user("ann")
    doc = (await api.document(ann, "closing"))["id"]
    w = Writer(engine_of(api), max_batch=2)
    queued: list[Awaitable[Any]] = [
        asyncio.ensure_future(w.writer.write(w.message(ann, doc, f"m{n}"))) for n in range(5)
    ]
    await asyncio.sleep(0)  # queued, the first batch begun
    await w.writer.close()
    assert [out.seq for out, _ in await asyncio.gather(*queued)] == [1, 2, 3, 4, 5]
    with pytest.raises(RuntimeError, match="closed"):
        await w.writer.write(w.message(ann, doc, "too late"))


async def test_a_sender_that_stops_waiting_leaves_its_message_to_its_batch(api: Api) -> None:
    ann = await api.user("ann")
    doc = (await api.document(ann, "impatient"))["id"]
    engine = engine_of(api)
    w = Writer(engine, batches=FailingOnce(cast(BatchWriter, batch_writer(engine))))
    # Its batch is refused after its sender gave up: out of flight all the same, so a
    # join does not wait for it for ever.
    refused = asyncio.ensure_future(w.writer.write(w.message(ann, doc, "refused")))
    await asyncio.sleep(0)
    refused.cancel()
    assert await asyncio.wait_for(w.writer.announced(uuid.UUID(doc)), 5) == 0
    # Its batch is stored after its sender gave up: stored and announced all the same.
    stored_anyway = asyncio.ensure_future(w.writer.write(w.message(ann, doc, "kept")))
    await asyncio.sleep(0)
    stored_anyway.cancel()
    ((after, _),) = await w.batch(w.message(ann, doc, "after"))
    assert after.seq == 2 and [m.data["text"] for m in w.announced] == ["kept", "after"]
    assert await w.writer.announced(uuid.UUID(doc)) == 2
    await w.writer.close()


async def test_documents_it_forgot_are_read_again_with_their_last_seq(api: Api) -> None:
    ann = await api.user("ann")
    docs = [(await api.document(ann, f"doc {n}"))["id"] for n in range(8)]
    w = Writer(engine_of(api), max_known=3)
    for n, doc in enumerate(docs):  # doc n gets n + 1 messages
        await w.batch(*(w.message(ann, doc, f"{doc} {k}") for k in range(n + 1)))
    # Only a few are kept in memory; the others are read back, each with its seq.
    assert [await w.writer.announced(uuid.UUID(doc)) for doc in docs] == list(range(1, 9))
    assert [await w.writer.announced(uuid.UUID(doc)) for doc in reversed(docs)] == list(
        range(8, 0, -1)
    )
    await w.writer.close()


async def test_a_send_that_finds_its_role_known_waits_behind_one_still_reading_it(
    api: Api,
) -> None:
    """ChatService.submit queues a send at once when the sender's role is cached, and
    after reading it otherwise. The role read by a first send lands in the cache before
    that send is queued: a second send arriving in between must queue behind it."""
    ann = await api.user("ann")
    doc_id = (await api.document(ann))["id"]
    document_id, user_id = uuid.UUID(doc_id), uuid.UUID(ann.id)
    chat = api.client.app[CHAT_SERVICE]
    read = chat._room_access  # the real read: DocumentService's, which fills the cache
    gate = asyncio.Event()

    async def slow_read(principal: Principal, document_id: uuid.UUID) -> RoomAccess:
        access = await read(principal, document_id)  # cached from here on
        await gate.wait()
        return access

    chat._room_access = slow_read
    chat._memberships.drop((document_id, user_id))
    principal = Principal(user_id, ann.username, GlobalRole.USER, "token")
    first = chat.submit(principal, document_id, client_msg_id="first", text="first")
    await eventually(lambda: truthy(chat._memberships.get((document_id, user_id))))
    second = chat.submit(principal, document_id, client_msg_id="second", text="second")
    third = chat.submit(principal, document_id, client_msg_id="third", text="third")
    gate.set()
    seqs = [stored.seq for stored, _ in await asyncio.gather(first, second, third)]
    assert seqs == [1, 2, 3]
    assert [text for _, text, _ in await stored(api, ann, doc_id)] == ["first", "second", "third"]
    # Nothing waits any more: the next send is queued at once, with no task.
    fourth = chat.submit(principal, document_id, client_msg_id="fourth", text="fourth")
    assert not isinstance(fourth, asyncio.Task)
    assert (await fourth)[0].seq == 4


def test_message_ids_are_version_7_uuids_of_their_batchs_millisecond() -> None:
    at = datetime(2026, 12, 7, 3, 4, 5, 678_901, tzinfo=UTC)
    ids = time_ordered_uuids(10_000, at)
    assert len(set(ids)) == len(ids)
    assert {(i.version, i.variant) for i in ids} == {(7, uuid.RFC_4122)}
    assert {i.int >> 80 for i in ids} == {1_796_612_645_678}  # ms since 1970, in 48 bits
    # Every bit after the time is random but the version and the variant: each is set
    # in about half of them (a bit held at 0 or 1 would be 5,000 ± 300 away; chance
    # alone, six standard deviations).
    for bit in range(80):
        if bit in range(76, 80) or bit in (62, 63):
            continue
        ones = sum(i.int >> bit & 1 for i in ids)
        assert 4_700 < ones < 5_300, bit
    # A later millisecond's ids sort after all of them: new rows go to the end of the
    # primary key's index.
    later = time_ordered_uuids(100, at + timedelta(milliseconds=1))
    assert min(later) > max(ids)
