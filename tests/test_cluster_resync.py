"""Redis outages between nodes (realtime/cluster/resync.py): what a room's members
missed while a node's link was down reaches them once it is back, with no new traffic.

Real ``python -m app`` processes on one PostgreSQL database and one Redis, as in
tests/test_cluster.py (whose fixtures these use). One node reaches Redis through a TCP
proxy of this test's own, which cuts it off (every connection closed, none accepted)
and lets it back, while the other node and Redis go on as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from roomclient import RoomClient
from tests.cluster_nodes import (
    WAIT,
    StartNodes,
    api_of,
    chat_texts,
    metric,
    three_members,
)
from tests.conftest import REDIS_URL
from tests.helpers import User, eventually
from tests.test_cli import free_port
from tests.test_webui_e2e import WAIT_MS, chromium, expect, sign_in
from tests.test_yjs_js import Server

pytestmark = pytest.mark.slow

Clients = Callable[[Server, User], Awaitable[RoomClient]]


class CuttableProxy:
    """127.0.0.1:<port> forwarded to Redis, until ``cut``."""

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self._upstream = upstream_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def open(self) -> None:
        self._server = await asyncio.start_server(
            self._forward, "127.0.0.1", self.port, reuse_address=True
        )

    async def cut(self) -> None:
        """No connection through any more: the open ones closed, new ones refused."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))


@pytest.fixture
async def proxy(shared_redis: str) -> AsyncIterator[CuttableProxy]:
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = CuttableProxy(port)
    await proxy.open()
    yield proxy
    await proxy.cut()


def resyncs(client: RoomClient) -> list[dict[str, Any]]:
    return [data for event, data in client.events if event == "room:resync"]


def _in_order_once(client: RoomClient, texts: list[str]) -> None:
    got = chat_texts(client)
    assert all(got.count(text) == 1 for text in texts), got
    seqs = [d["message"]["seq"] for e, d in client.events if e == "chat:message"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs


async def test_a_node_cut_off_from_redis_and_back_resyncs_both_sides(
    proxy: CuttableProxy,
    start_nodes: StartNodes,
    shared_redis: str,
    clients: Clients,
) -> None:
    # A reaches Redis through the proxy, B directly.
    # Pages of 2 users for 3: room:resync lists a page and the clients page on.
    paged = {"PRESENCE_PAGE_SIZE": "2"}
    (a,), (b,) = await asyncio.gather(
        start_nodes(1, proxy.url, **paged), start_nodes(1, shared_redis, **paged)
    )
    async with api_of(a) as api:
        ann, ben, cat, doc_id = await three_members(api)
    on_a, on_b = await clients(a, ann), await clients(b, ben)
    for client in (on_a, on_b):
        await client.join(doc_id)
    await on_b.send(doc_id, "ben before")
    await eventually(lambda: _has_texts(on_a, ["ben before"]), timeout=WAIT)
    await on_a.set_typing(doc_id, True)
    await eventually(lambda: _typing(on_b, doc_id, ann), timeout=WAIT)

    await proxy.cut()
    await eventually(lambda: _link(a, 0), timeout=WAIT)
    # Each side goes on with its own members; the other side hears none of it.
    sent_on_a = [f"ann during {i}" for i in range(3)]
    for text in sent_on_a:
        await on_a.send(doc_id, text)
    await on_a.update_presence(doc_id, {"cursor": 7})
    await on_a.set_typing(doc_id, False)
    cat_on_a = await clients(a, cat)
    await cat_on_a.join(doc_id)
    # (B sends nothing: its next message would read the gap before it, resync or not.)
    edited = next(m for m in on_b.room(doc_id).messages if m["text"] == "ben before")
    await on_b.edit(doc_id, edited["id"], "ben before, edited")
    await asyncio.sleep(0.5)  # given time, nothing of A's crosses while it is cut off
    assert "ann during 0" not in chat_texts(on_b)

    await proxy.open()
    # No new traffic: the resync alone brings each side what it missed.
    await eventually(lambda: _has_texts(on_b, sent_on_a), timeout=WAIT)
    _in_order_once(on_b, sent_on_a)

    # room:resync: the room's presence, its first page, and the last seq each holds now.
    first_two = sorted([ann.id, ben.id, cat.id], key=lambda user_id: uuid.UUID(user_id).int)[:2]

    def b_resynced() -> None:
        got = resyncs(on_b)
        assert len(got) == 1, got  # B was not away: only A asked it to
        resync = got[0]
        assert resync["document_id"] == doc_id
        assert [u["user_id"] for u in resync["presence"]] == first_two
        assert resync["presence_count"] == 3 and resync["presence_more"] is True
        users = {u["user_id"]: u for u in resync["presence"]}
        if ann.id in users:
            assert [c["state"] for c in users[ann.id]["connections"]] == [{"cursor": 7}]
        assert resync["last_seq"] == max(
            d["message"]["seq"] for e, d in on_b.events if e == "chat:message"
        )

    await eventually(b_resynced, timeout=WAIT)
    view = on_b.room(doc_id)

    def b_paged_on() -> None:  # roomclient asked presence:list for the third
        assert set(view.presence) == {ann.id, ben.id, cat.id}
        assert list(view.presence[ann.id]["connections"].values()) == [{"cursor": 7}]

    await eventually(b_paged_on, timeout=WAIT)
    assert ann.id not in view.typing  # its typing: false was lost; the resync cleared it

    def a_resynced() -> None:
        assert len(resyncs(on_a)) == 1
        assert [u["user_id"] for u in resyncs(on_a)[0]["presence"]] == first_two
        assert set(on_a.room(doc_id).presence) == {ann.id, ben.id, cat.id}
        # The edit made on B meanwhile: read again after the resync.
        texts = [m["text"] for m in on_a.room(doc_id).messages]
        assert "ben before, edited" in texts and "ben before" not in texts

    await eventually(a_resynced, timeout=WAIT)
    assert await metric(a, "cluster_outages_total") == 1
    assert await metric(b, "cluster_outages_total") == 0


async def test_the_web_page_on_a_node_cut_off_from_redis_catches_up_at_the_resync(
    proxy: CuttableProxy,
    start_nodes: StartNodes,
    shared_redis: str,
    clients: Clients,
) -> None:
    """The shipped page, in Chromium, on the node that loses Redis: who arrived and what
    was edited on the other node meanwhile show once it is back (room:resync, then
    presence:list for the rest of a room of more than one page, and the newest
    history page read again), with no new traffic."""
    paged = {"PRESENCE_PAGE_SIZE": "1"}
    (a,), (b,) = await asyncio.gather(
        start_nodes(1, proxy.url, **paged), start_nodes(1, shared_redis, **paged)
    )
    async with api_of(a) as api:
        ann, ben, cat, doc_id = await three_members(api)
    on_b = await clients(b, ben)
    await on_b.join(doc_id)
    sent = await on_b.send(doc_id, "said before the cut")
    async with chromium() as browser:
        context = await browser.new_context()
        tokens = {
            "access_token": ann.access_token,
            "refresh_token": ann.refresh_token,
            "expires_in": 900,
        }
        await sign_in(context, tokens)
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        await page.goto(f"{a.base}/#/d/{doc_id}")
        people = page.locator(".people li")
        await expect(people.filter(has_text="ann (you)")).to_be_visible()
        await expect(people.filter(has_text="ben")).to_be_visible()
        await expect(page.locator(".message", has_text="said before the cut")).to_be_visible()

        await proxy.cut()
        await eventually(lambda: _link(a, 0), timeout=WAIT)
        cat_on_b = await clients(b, cat)
        await cat_on_b.join(doc_id)
        await on_b.edit(doc_id, sent["id"], "edited while A was cut off")
        await asyncio.sleep(0.5)  # given time, nothing of B's reaches the page
        await expect(people.filter(has_text="cat")).to_have_count(0)
        await expect(page.locator(".message", has_text="while A was cut off")).to_have_count(0)

        await proxy.open()
        await expect(people.filter(has_text="cat")).to_be_visible()
        await expect(people).to_have_count(3)
        await expect(
            page.locator(".message", has_text="edited while A was cut off")
        ).to_contain_text("(edited)")
        await context.close()


def _has_texts(client: RoomClient, texts: list[str]) -> None:
    assert set(texts) <= set(chat_texts(client)), chat_texts(client)


def _typing(client: RoomClient, doc_id: str, user: User) -> None:
    assert user.id in client.room(doc_id).typing


async def _link(node: Server, value: int) -> None:
    assert await metric(node, "cluster_link_up") == value
