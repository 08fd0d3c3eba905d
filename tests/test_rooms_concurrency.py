"""Many clients sending at once into one room: seqs stay gapless, every message is
stored once, and everybody hears the room in the same (seq) order. Many joining at
once: each gets its own access."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

import pytest

from roomclient import CommandError, RoomClient
from tests.conftest import AppFactory, ClientFactory, ConnectOn
from tests.helpers import Api, User, eventually

USERS = 20
TABS = 5  # connections per user: 100 clients in the room, all sending at once
SENDS = 10  # per client: 1,000 messages in all
TOTAL = USERS * TABS * SENDS
SEND_TIMEOUT = 60.0  # per attempt; RoomClient.send retries with the same client_msg_id
WAIT = 40.0


def chat_seqs(client: RoomClient) -> list[int]:
    """Seqs of the ``chat:message`` events ``client`` received, in arrival order."""
    return [data["message"]["seq"] for event, data in client.events if event == "chat:message"]


async def all_messages(api: Api, user: User, document_id: str) -> list[dict[str, Any]]:
    """The whole history over REST, paging forwards with ``after`` and ``limit=100``."""
    messages: list[dict[str, Any]] = []
    after = 0
    for _ in range(TOTAL // 100 + 2):  # bounded: one page more than needed
        page = await api.call(
            "GET", f"/api/v1/documents/{document_id}/messages?after={after}&limit=100", user=user
        )
        messages += page["items"]
        if not page["has_more"]:
            return messages
        after = page["items"][-1]["seq"]
    raise AssertionError(f"still has_more after {len(messages)} messages")


async def room_of(
    api: Api, connect: ClientFactory, users: int, tabs: int
) -> tuple[list[User], str, list[tuple[User, RoomClient]]]:
    """``users`` editors of one document, each with ``tabs`` joined connections."""
    people = [await api.user(f"user{i}") for i in range(users)]
    document_id: str = (await api.document(people[0], "Busy room"))["id"]
    for member in people[1:]:
        await api.share(people[0], document_id, member, "editor")
    clients = [(user, await connect(user)) for user in people for _ in range(tabs)]
    await asyncio.gather(*(client.join(document_id) for _, client in clients))
    return people, document_id, clients


async def test_a_thousand_concurrent_sends_are_stored_once_in_one_order(
    api: Api, connect: ClientFactory
) -> None:
    people, doc, clients = await room_of(api, connect, USERS, TABS)

    async def send(index: int, client: RoomClient, n: int) -> tuple[str, dict[str, Any]]:
        msg_id = f"c{index:02d}-m{n:02d}"
        ack = await client.send(
            doc, f"text of {msg_id}", client_msg_id=msg_id, timeout=SEND_TIMEOUT
        )
        return msg_id, ack

    results = await asyncio.gather(
        *(send(i, client, n) for i, (_, client) in enumerate(clients) for n in range(SENDS))
    )

    # Every ack is a distinct seq; together they are exactly 1..TOTAL.
    acks = dict(results)
    assert len(acks) == TOTAL
    assert sorted(ack["seq"] for ack in acks.values()) == list(range(1, TOTAL + 1))

    # Stored: exactly TOTAL rows, seqs gapless and increasing, each client_msg_id once.
    stored = await all_messages(api, people[0], doc)
    assert len(stored) == TOTAL
    assert [m["seq"] for m in stored] == list(range(1, TOTAL + 1))
    counts = Counter(m["client_msg_id"] for m in stored)
    assert set(counts) == set(acks) and set(counts.values()) == {1}
    author_of = {f"c{i:02d}": user.username for i, (user, _) in enumerate(clients)}
    for message in stored:
        msg_id = message["client_msg_id"]
        assert message["text"] == f"text of {msg_id}", message
        assert message["author"]["username"] == author_of[msg_id[:3]], message
        assert (message["id"], message["seq"]) == (acks[msg_id]["id"], acks[msg_id]["seq"])

    # Every client ends up with the whole room, in seq order.
    everything = list(range(1, TOTAL + 1))

    def all_caught_up() -> None:
        for index, (_, client) in enumerate(clients):
            seqs = [m["seq"] for m in client.room(doc).messages]
            assert seqs == everything, (index, len(seqs))

    await eventually(all_caught_up, timeout=WAIT, interval=0.1)

    # The broadcasts each client heard came in strictly increasing seq order, no
    # duplicates, and are exactly what the others sent (its own sends came as acks).
    for index, (_, client) in enumerate(clients):
        heard = chat_seqs(client)
        assert all(a < b for a, b in itertools.pairwise(heard)), index
        own = {acks[f"c{index:02d}-m{n:02d}"]["seq"] for n in range(SENDS)}
        assert len(heard) == TOTAL - SENDS, (index, len(heard))
        assert set(heard) == set(everything) - own, index
        texts = {m["seq"]: m["text"] for m in client.room(doc).messages}
        assert texts == {m["seq"]: m["text"] for m in stored}, index


async def test_a_retry_storm_with_one_client_msg_id_stores_one_message(
    api: Api, connect: ClientFactory
) -> None:
    people, doc, clients = await room_of(api, connect, 2, 2)
    ann_tabs = [client for user, client in clients if user is people[0]]
    listener = clients[-1][1]  # a tab of the other user
    first = await ann_tabs[0].send(doc, "before the storm")

    acks = await asyncio.gather(
        *(
            ann_tabs[n % 2].send(doc, f"attempt {n}", client_msg_id="storm-1", timeout=SEND_TIMEOUT)
            for n in range(10)
        )
    )
    assert all(ack == acks[0] for ack in acks), acks
    assert acks[0]["seq"] == first["seq"] + 1

    after = await ann_tabs[1].send(doc, "after the storm")
    assert after["seq"] == first["seq"] + 2  # the refused retries used no seq
    stored = await all_messages(api, people[1], doc)
    assert [m["seq"] for m in stored] == [1, 2, 3]
    assert [m["client_msg_id"] for m in stored].count("storm-1") == 1
    storm = stored[1]
    assert storm["id"] == acks[0]["id"] and storm["text"].startswith("attempt ")

    def everyone_has_three() -> None:
        for _, client in clients:
            assert [m["seq"] for m in client.room(doc).messages] == [1, 2, 3]
        assert chat_seqs(listener) == [1, 2, 3]

    await eventually(everyone_has_three, timeout=WAIT)
    # The winner was broadcast once (to every connection but its sender's); the
    # answered retries broadcast nothing.
    heard = [chat_seqs(client) for _, client in clients]
    assert sum(seqs.count(2) for seqs in heard) == len(clients) - 1, heard
    assert all(len(seqs) == len(set(seqs)) for seqs in heard), heard


async def test_a_crowd_joining_at_once_gets_each_their_own_role(
    start_app: AppFactory, connect_on: ConnectOn
) -> None:
    """The memberships a burst of joins misses are read together: each join still
    gets its own user and role, in one room or another, and the strangers in the
    crowd are refused as for a document that does not exist."""
    api = Api(await start_app(access_cache_seconds=0))  # every join reads its access
    connect = connect_on(api)
    people = [await api.user(f"user{i}") for i in range(24)]
    owner, other_owner = people[0], people[1]
    first = (await api.document(owner, "First"))["id"]
    second = (await api.document(other_owner, "Second"))["id"]
    wanted: dict[str, tuple[str, str | None]] = {}  # username: (document, role)
    for i, person in enumerate(people[2:], start=2):
        document, sharer = (first, owner) if i % 2 else (second, other_owner)
        role = ("editor", "viewer", None)[i % 3]  # None: a stranger to it
        if role is not None:
            await api.share(sharer, document, person, role)
        wanted[person.username] = (document, role)
    wanted[owner.username], wanted[other_owner.username] = (first, "owner"), (second, "owner")
    clients = {person.username: await connect(person) for person in people}

    async def join(username: str) -> tuple[str, str | None]:
        document = wanted[username][0]
        try:
            data = await clients[username].command("join", {"document_id": document})
        except CommandError as exc:
            return exc.code, None
        assert data["user"]["username"] == username and data["document"]["id"] == document
        return data["document"]["title"], data["role"]

    outcomes = dict(zip(wanted, await asyncio.gather(*map(join, wanted)), strict=True))
    titles = {first: "First", second: "Second"}
    assert outcomes == {
        username: (titles[document], role) if role else ("not_found", None)
        for username, (document, role) in wanted.items()
    }


@pytest.mark.parametrize("access_cache_seconds", [0, 0.01, 60])
async def test_one_connections_sends_are_stored_in_the_order_it_sent_them(
    start_app: AppFactory, connect_on: ConnectOn, access_cache_seconds: float
) -> None:
    """Sent without waiting for acks: each send is queued in the turn that read it when
    the sender's role is known, or in a task after reading it (always with no cache; now
    and then with one that expires every 10 ms). A send that finds the role known while
    an earlier one still reads it waits behind that one."""
    api = Api(await start_app(access_cache_seconds=access_cache_seconds))
    ann = await api.user("ann")
    doc = (await api.document(ann))["id"]
    client = await connect_on(api)(ann)
    await client.join(doc)
    sends = 300
    acks = await asyncio.gather(
        *(client.send(doc, f"m{n}", client_msg_id=f"m{n}") for n in range(sends))
    )
    assert [ack["seq"] for ack in acks] == list(range(1, sends + 1))
    stored = await all_messages(api, ann, doc)
    assert [m["text"] for m in stored] == [f"m{n}" for n in range(sends)]
