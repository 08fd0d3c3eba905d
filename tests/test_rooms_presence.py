"""Arrivals and departures announced together (``presence:changed``,
``PRESENCE_BATCH_SECONDS``): a burst of joins costs each member a few events; a join
ack plus the events after it add up to the room as it is; a user's state and typing
never overtake their arrival or departure; a reader that falls behind converges."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.keys import CHAT_SERVICE
from realtime.presence import Presence, PresenceChanges
from roomclient import CommandError, RoomClient
from tests.conftest import AppFactory, ClientFactory, ConnectOn
from tests.helpers import Api, User, arrivals, departures, equal, eventually
from tests.test_delivery_slow import MAX_BUFFERED, MESSAGE, slow_reader

BURST = 24


def changes(client: RoomClient) -> list[dict[str, Any]]:
    return [data for name, data in client.events if name == "presence:changed"]


def seen(client: RoomClient) -> list[tuple[Any, ...]]:
    """What ``client`` heard of presence and typing, in order, in short."""
    out: list[tuple[Any, ...]] = []
    for name, data in client.events:
        if name == "presence:changed":
            out.append((name, data["left"], [user["user_id"] for user in data["joined"]]))
        elif name == "presence:state":
            out.append((name, data["user_id"], data["state"]))
        elif name == "typing":
            out.append((name, data["user_id"], data["typing"]))
    return out


async def members(api: Api, owner: User, document_id: str, names: list[str]) -> list[User]:
    users = [await api.user(name) for name in names]
    for user in users:
        await api.share(owner, document_id, user, "editor")
    return users


async def test_a_burst_of_joins_reaches_each_member_in_a_few_events(
    start_app: AppFactory, connect_on: ConnectOn
) -> None:
    api = Api(await start_app(presence_batch_seconds=2))
    ann = await api.user("ann")
    doc = await api.document(ann)
    users = await members(api, ann, doc["id"], [f"user{i}" for i in range(BURST)])
    connect = connect_on(api)
    observer = await connect(ann)
    await observer.join(doc["id"])
    # The first change in a quiet room goes out at once (the joiner hears it too).
    await eventually(lambda: equal(arrivals(observer.events), [ann.id]))

    joiners = await asyncio.gather(*(connect(user) for user in users))
    await asyncio.gather(*(joiner.join(doc["id"]) for joiner in joiners))
    everyone = {ann.id, *(user.id for user in users)}
    await eventually(lambda: equal(set(arrivals(observer.events)), everyone), timeout=10)
    # One event per interval: the burst took one (up to three if it ran past two).
    assert 2 <= len(changes(observer)) <= 4, changes(observer)
    assert sorted(arrivals(observer.events)) == sorted(everyone)  # each user once
    assert departures(observer.events) == []
    assert set(observer.room(doc["id"]).presence) == everyone
    # Each joiner: its ack, then the events after it (repeating some of the ack), is
    # the whole room.
    for joiner in joiners:
        room = joiner.room(doc["id"])
        await eventually(lambda room=room: equal(set(room.presence), everyone), timeout=10)
        assert len(changes(joiner)) <= 3, changes(joiner)
        assert departures(joiner.events) == []


async def test_a_larger_room_waits_longer_between_its_events_up_to_the_longest() -> None:
    """Rooms of 2, 6 and 60 users, the interval 0.1 s per 2 users, at most 0.5 s."""
    loop = asyncio.get_running_loop()
    small, large, huge = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    users = {small: 2, large: 6, huge: 60}
    heard: dict[uuid.UUID, list[float]] = {room: [] for room in users}
    changes = PresenceChanges(
        interval=0.1,
        publish=lambda room, left, joined: heard[room].append(loop.time()),
        users=users.__getitem__,
        per_users=2,
        longest=0.5,
    )
    expected = {small: 0.1, large: 0.3, huge: 0.5}
    assert {room: changes.interval(room) for room in users} == pytest.approx(expected)
    for room in users:  # the first change in a quiet room: out at the end of the turn
        changes.joined(room, uuid.uuid4(), "first")
    await eventually(lambda: equal([len(times) for times in heard.values()], [1, 1, 1]))
    for room in users:  # the next waits for the room's interval since that one
        changes.joined(room, uuid.uuid4(), "second")
    # Uncapped, the huge room's would wait 3 s.
    await eventually(
        lambda: equal([len(times) for times in heard.values()], [2, 2, 2]), timeout=2.5
    )
    for room, (first, second) in heard.items():
        assert second - first >= expected[room] - 0.01, (room, second - first)
    changes.close()


async def test_a_join_and_a_leave_within_one_interval_and_a_join_meanwhile(
    start_app: AppFactory, connect_on: ConnectOn
) -> None:
    api = Api(await start_app(presence_batch_seconds=5))
    ann, ben, doc = await api.room("editor")
    [cat] = await members(api, ann, doc["id"], ["cat"])
    connect = connect_on(api)
    a = await connect(ann)
    await a.join(doc["id"])
    await eventually(lambda: equal(arrivals(a.events), [ann.id]))  # at once: a quiet room

    b = await connect(ben)
    await b.join(doc["id"])  # announced at the interval's end...
    c = await connect(cat)
    c_room = await c.join(doc["id"])
    # ...but already in a join ack meanwhile.
    assert set(c_room.presence) == {ann.id, ben.id, cat.id}
    await b.leave(doc["id"])
    assert changes(a) == [{"document_id": doc["id"], "left": [], "joined": [ann_entry(ann)]}]

    # cat's state must not overtake cat's arrival: the room's changes go out first.
    await c.update_presence(doc["id"], {"cursor": 1})
    batch = {"document_id": doc["id"], "left": [ben.id], "joined": [ann_entry(cat)]}
    await eventually(lambda: equal(changes(c), [batch]))
    await eventually(lambda: equal(seen(a)[-2:], [seen_of(batch), state_of(cat, {"cursor": 1})]))
    assert changes(a)[1:] == [batch]
    # ben came and went between two events: a departure (cat's ack listed him), no
    # arrival.
    assert ben.id not in arrivals(a.events)
    assert set(a.room(doc["id"]).presence) == {ann.id, cat.id}
    assert list(a.room(doc["id"]).presence[cat.id]["connections"].values()) == [{"cursor": 1}]
    assert set(c_room.presence) == {ann.id, cat.id}


def ann_entry(user: User) -> dict[str, str]:
    return {"user_id": user.id, "username": user.username}


def seen_of(batch: dict[str, Any]) -> tuple[Any, ...]:
    return ("presence:changed", batch["left"], [user["user_id"] for user in batch["joined"]])


def state_of(user: User, state: dict[str, Any] | None) -> tuple[Any, ...]:
    return ("presence:state", user.id, state)


async def test_a_user_who_leaves_and_returns_within_one_interval(
    start_app: AppFactory, connect_on: ConnectOn
) -> None:
    api = Api(await start_app(presence_batch_seconds=5))
    ann, ben, doc = await api.room("editor")
    connect = connect_on(api)
    a = await connect(ann)
    await a.join(doc["id"])
    await eventually(lambda: equal(arrivals(a.events), [ann.id]))

    tab1 = await connect(ben)
    await tab1.join(doc["id"])
    await tab1.set_typing(doc["id"], True)  # ben's arrival goes out first, early
    await tab1.update_presence(doc["id"], {"cursor": 1})
    await eventually(lambda: equal(seen(a)[-1:], [state_of(ben, {"cursor": 1})]))
    await tab1.close()  # typing false at once; the departure waits for the interval
    await eventually(lambda: equal(seen(a)[-1:], [("typing", ben.id, False)]))
    tab2 = await connect(ben)
    await tab2.join(doc["id"])
    await tab2.update_presence(doc["id"], {"cursor": 2})
    await eventually(lambda: equal(seen(a)[-1:], [state_of(ben, {"cursor": 2})]))

    assert seen(a) == [
        ("presence:changed", [], [ann.id]),
        ("presence:changed", [], [ben.id]),
        ("typing", ben.id, True),
        state_of(ben, {"cursor": 1}),
        ("typing", ben.id, False),
        ("presence:changed", [ben.id], [ben.id]),  # gone and back: tab1's state went
        state_of(ben, {"cursor": 2}),
    ]
    room = a.room(doc["id"])
    assert list(room.presence[ben.id]["connections"].values()) == [{"cursor": 2}]
    assert room.typing == set()


async def test_with_no_interval_each_turn_goes_out_at_its_end(
    start_app: AppFactory, connect_on: ConnectOn
) -> None:
    api = Api(await start_app(presence_batch_seconds=0))
    ann, ben, doc = await api.room("editor")
    connect = connect_on(api)
    a, b = await connect(ann), await connect(ben)
    await a.join(doc["id"])
    await b.join(doc["id"])
    await eventually(lambda: equal(arrivals(a.events), [ann.id, ben.id]))
    await b.leave(doc["id"])
    await eventually(lambda: equal(departures(a.events), [ben.id]))
    assert set(a.room(doc["id"]).presence) == {ann.id}
    assert [len(change["joined"]) + len(change["left"]) for change in changes(a)] == [1, 1, 1]


async def test_every_view_converges_while_tabs_come_and_go_at_once(
    start_app: AppFactory, connect_on: ConnectOn
) -> None:
    """Seeded rounds of joins, leaves and states by several tabs at once; then each
    joined tab's view (its acks, the presence:list pages after them, and the events
    after those) is the room as it is. Pages of 2 users: most joins page meanwhile."""
    api = Api(await start_app(presence_batch_seconds=0.05, presence_page_size=2))
    owner = await api.user("owner")
    doc = await api.document(owner)
    document_id = doc["id"]
    users = await members(api, owner, document_id, [f"user{i}" for i in range(5)])
    connect = connect_on(api)
    observer = await connect(owner)
    await observer.join(document_id)
    tabs = [await connect(user) for user in users for _ in range(2)]
    joined: set[int] = set()
    rng = random.Random(12)

    async def step(index: int) -> None:
        tab = tabs[index]
        if index not in joined:
            if rng.random() < 0.6:
                joined.add(index)
                await tab.join(document_id)
        elif (roll := rng.random()) < 0.3:
            joined.discard(index)
            await tab.leave(document_id)
        elif roll < 0.6:
            await tab.update_presence(document_id, {"tab": index, "at": rng.random()})

    for _ in range(8):
        await asyncio.gather(*(step(index) for index in range(len(tabs))))
    joined.add(-1)
    views = {index: tabs[index] for index in joined if index >= 0}
    views[-1] = observer
    # The truth: a fresh ack and its pages (the observer is in the room: no event).
    truth = {
        user["user_id"]: {c["connection_id"]: c["state"] for c in user["connections"]}
        for user in await whole_presence(observer, document_id)
    }
    for tab in views.values():
        own = tab.sio.get_sid("/")  # a connection is not sent its own state
        expected = {
            user_id: {sid: state for sid, state in states.items() if sid != own}
            for user_id, states in truth.items()
        }
        await eventually(
            lambda tab=tab, own=own, expected=expected: equal(
                view_of(tab, document_id, own), expected
            ),
            timeout=10,
        )


async def whole_presence(client: RoomClient, document_id: str) -> list[dict[str, Any]]:
    """A fresh join ack's presence and every presence:list page after it, checked
    against each other: pages of users in the order of their ids, counted."""
    ack = await client.command("join", {"document_id": document_id})
    entries, more = ack["presence"], ack["presence_more"]
    while more:
        after = entries[-1]["user_id"]
        page = await client.command("presence:list", {"document_id": document_id, "after": after})
        assert page["presence"] and page["count"] == ack["presence_count"]
        entries, more = entries + page["presence"], page["more"]
    ids = [uuid.UUID(entry["user_id"]) for entry in entries]
    assert ids == sorted(ids, key=lambda user_id: user_id.int) and len(set(ids)) == len(ids)
    assert len(entries) == ack["presence_count"]
    return entries


def view_of(client: RoomClient, document_id: str, own: str) -> dict[str, dict[str, Any]]:
    return {
        user_id: {sid: state for sid, state in entry["connections"].items() if sid != own}
        for user_id, entry in client.room(document_id).presence.items()
    }


async def test_a_slow_reader_catches_up_on_arrivals_and_departures(
    start_app: AppFactory, connect_on: ConnectOn
) -> None:
    client: TestClient[web.Request, web.Application] = await start_app(
        delivery_max_buffered_bytes=MAX_BUFFERED, presence_batch_seconds=0
    )
    api = Api(client)
    owner, member, doc = await api.room()
    document_id = doc["id"]
    users = await members(api, owner, document_id, [f"user{i}" for i in range(4)])
    connect = connect_on(api)
    sender = await connect(owner)
    await sender.join(document_id)
    raw, connection = await slow_reader(client, member.access_token, document_id)
    # A fresh ack (it is in the room already): what came before it, it holds.
    ack, _ = await raw.call("join", {"document_id": document_id})
    for i in range(100):  # until the transport is full and the outbox queues
        await sender.send(document_id, f"{i:03d} {MESSAGE[:1000]}")
        if not connection.outbox.direct:
            break
    assert not connection.outbox.direct and not connection.outbox.closed

    tabs = [await connect(user) for user in users]
    for round_ in range(3):  # each a few turns: several presence:changed
        for index, tab in enumerate(tabs):
            if (index + round_) % 3:
                await tab.join(document_id)
                await tab.update_presence(document_id, {"round": round_})
            elif tab.rooms:
                await tab.leave(document_id)
    assert not connection.outbox.closed
    events, _ = await raw.events(until=1)
    truth = await sender.command("join", {"document_id": document_id})
    await raw.close()

    view = {
        user["user_id"]: {c["connection_id"]: c["state"] for c in user["connections"]}
        for user in ack["data"]["presence"]
    }
    for name, data in events:
        apply(view, name, data)
    assert view == {
        user["user_id"]: {c["connection_id"]: c["state"] for c in user["connections"]}
        for user in truth["presence"]
    }
    assert len([name for name, _ in events if name == "presence:changed"]) >= 3


def apply(view: dict[str, dict[str, Any]], name: str, data: Any) -> None:
    """docs/protocol.md §5.7: departures, then arrivals; states per connection."""
    if name == "presence:changed":
        for user_id in data["left"]:
            view.pop(user_id, None)
        for user in data["joined"]:
            view.setdefault(user["user_id"], {})
    elif name == "presence:state":
        states = view.setdefault(data["user_id"], {})
        if data["state"] is None:
            states.pop(data["connection_id"], None)
        else:
            states[data["connection_id"]] = data["state"]


async def test_a_join_acks_presence_is_each_users_entry_as_it_is_now() -> None:
    """Entries are encoded once per change (presence.py): each snapshot still shows
    every user as they are, in the order of their ids."""
    presence, room = Presence(), uuid.uuid4()
    ids = sorted((uuid.uuid4() for _ in range(3)), key=lambda user_id: user_id.int)
    for index, user_id in reversed(list(enumerate(ids))):  # arriving last to first
        await presence.join(room, user_id, f"user{index}", f"sid{index}")

    async def snapshot() -> list[dict[str, Any]]:
        page = await presence.page(room, None, 10)
        entries: list[dict[str, Any]] = orjson.loads(orjson.dumps(page.entries))
        return entries

    assert [entry["user_id"] for entry in await snapshot()] == [str(user_id) for user_id in ids]
    await presence.set_state(room, ids[1], "sid1", {"cursor": 1})
    await presence.join(room, ids[1], "user1", "tab2")
    assert (await snapshot())[1] == {
        "user_id": str(ids[1]),
        "username": "user1",
        "connection_count": 2,
        "connections": [{"connection_id": "sid1", "state": {"cursor": 1}}],
    }
    await presence.leave(room, ids[1], "sid1")
    assert (await snapshot())[1]["connections"] == []
    await presence.leave(room, ids[1], "tab2")
    await presence.leave(room, ids[0], "sid0")
    await presence.join(room, ids[0], "user0", "again")  # back: listed in its place
    assert [entry["user_id"] for entry in await snapshot()] == [str(ids[0]), str(ids[2])]
    await presence.leave(room, ids[0], "again")
    await presence.leave(room, ids[2], "sid2")
    assert await snapshot() == []


async def test_a_leave_that_overtakes_its_join_leaves_nobody_present(
    api: Api, connect: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann, ben, doc = await api.room("editor")
    a, b = await connect(ann), await connect(ben)
    await a.join(doc["id"])
    chat = api.client.app[CHAT_SERVICE]
    entered, release = asyncio.Event(), asyncio.Event()
    enter_room = chat.enter_room

    async def slow_enter_room(*args: Any) -> Any:  # the join, in the room, not done yet
        backlog = await enter_room(*args)
        entered.set()
        await release.wait()
        return backlog

    monkeypatch.setattr(chat, "enter_room", slow_enter_room)
    joining = asyncio.create_task(b.command("join", {"document_id": doc["id"]}))
    await entered.wait()
    await b.command("leave", {"document_id": doc["id"]})
    release.set()
    with pytest.raises(CommandError) as refused:
        await joining
    assert refused.value.code == "not_joined"
    assert refused.value.message == "the connection left the room before its join completed"
    ack = await a.command("join", {"document_id": doc["id"]})  # a fresh ack: who is here
    assert [user["user_id"] for user in ack["presence"]] == [ann.id]
    assert ben.id not in arrivals(a.events)


async def test_a_large_rooms_join_lists_a_page_and_presence_list_the_rest(
    start_app: AppFactory, connect_on: ConnectOn
) -> None:
    """PRESENCE_PAGE_SIZE users in the ack (a crowd's joins do not each carry the
    room); ``presence:list`` pages on after a user id, whoever came or went meanwhile."""
    api = Api(await start_app(presence_page_size=3))
    owner = await api.user("owner")
    document_id = (await api.document(owner))["id"]
    users = await members(api, owner, document_id, [f"user{i}" for i in range(7)])
    connect = connect_on(api)
    tabs = [await connect(user) for user in users]
    for tab in tabs:
        await tab.join(document_id)
    everyone = sorted((uuid.UUID(user.id) for user in users), key=lambda user_id: user_id.int)
    by_id = {uuid.UUID(user.id): (user, tab) for user, tab in zip(users, tabs, strict=True)}

    observer = await connect(by_id[everyone[0]][0])  # a second tab: no arrival
    ack = await observer.command("join", {"document_id": document_id})
    assert [entry["user_id"] for entry in ack["presence"]] == [str(i) for i in everyone[:3]]
    assert ack["presence_count"] == 7 and ack["presence_more"] is True
    page = await observer.command(
        "presence:list", {"document_id": document_id, "after": str(everyone[2])}
    )
    assert [entry["user_id"] for entry in page["presence"]] == [str(i) for i in everyone[3:6]]
    assert page["count"] == 7 and page["more"] is True

    # The user a page ended at leaves: the next page starts after their id all the
    # same (the events tell the rest).
    await by_id[everyone[5]][1].leave(document_id)
    last = await observer.command(
        "presence:list", {"document_id": document_id, "after": str(everyone[5])}
    )
    assert [entry["user_id"] for entry in last["presence"]] == [str(everyone[6])]
    assert last["count"] == 6 and last["more"] is False
    # After an id past everyone: an empty last page.
    after_all = str(uuid.UUID(int=2**128 - 1))
    empty = await observer.command(
        "presence:list", {"document_id": document_id, "after": after_all}
    )
    assert empty == {"presence": [], "count": 6, "more": False}

    # roomclient pages through on its own: its view is the whole room.
    viewer = await connect(by_id[everyone[1]][0])
    await viewer.join(document_id)
    assert set(viewer.room(document_id).presence) == {str(i) for i in everyone} - {str(everyone[5])}


async def test_presence_list_needs_the_join_and_a_user_id(api: Api, connect: ClientFactory) -> None:
    ann, _, doc = await api.room("editor")
    client = await connect(ann)
    with pytest.raises(CommandError) as refused:
        await client.command("presence:list", {"document_id": doc["id"]})
    assert refused.value.code == "not_joined"
    await client.join(doc["id"])
    for after in ("ann", 3, "", str(uuid.uuid4()) + "x"):
        with pytest.raises(CommandError) as refused:
            await client.command("presence:list", {"document_id": doc["id"], "after": after})
        assert refused.value.code == "validation_failed", after
    page = await client.command("presence:list", {"document_id": doc["id"], "after": None})
    assert [entry["user_id"] for entry in page["presence"]] == [ann.id]


async def test_a_room_of_more_pages_than_the_rate_allows_is_paged_all_the_same(
    start_app: AppFactory, connect_on: ConnectOn
) -> None:
    """roomclient waits out ``rate_limited`` (its ``retry_after``) between pages: a room
    of thousands is more pages than the history class's burst."""
    api = Api(
        await start_app(presence_page_size=1, rate_history_burst=2, rate_history_per_second=20)
    )
    owner = await api.user("owner")
    document_id = (await api.document(owner))["id"]
    users = await members(api, owner, document_id, [f"user{i}" for i in range(6)])
    connect = connect_on(api)
    for user in users:
        await (await connect(user)).join(document_id)
    viewer = await connect(owner)
    await viewer.join(document_id)  # 6 pages after the ack, 2 at once
    assert set(viewer.room(document_id).presence) == {owner.id, *(user.id for user in users)}
