"""A server killed (SIGKILL) in the middle of a burst of chat sends loses nothing
acknowledged, leaves no gap in ``seq``, and answers every retry with what it stored.

Group commit acknowledges a message only after its batch committed; a batch that
committed but whose acks never left is found again by the retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any, cast

import aiohttp
import socketio
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests import test_yjs_js
from tests.helpers import Api, User
from tests.test_yjs_js import Server

server = test_yjs_js.server  # `python -m app` as a child process, ended by its PID

SENDERS = 10  # connections, two users with five tabs each
IN_FLIGHT = 20  # per connection: sends not yet acknowledged
KILL_AFTER = 400  # acknowledged messages before the kill
WAIT = 20.0


async def history(api: Api, user: User, doc_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await api.call(
            "GET", f"/api/v1/documents/{doc_id}/messages?after={after}&limit=100", user=user
        )
        messages += page["items"]
        if not page["has_more"]:
            return messages
        after = page["items"][-1]["seq"]


async def connected(base: str, user: User, doc_id: str) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(
        base, auth={"token": user.access_token}, transports=["websocket"], wait_timeout=WAIT
    )
    reply = await client.call("join", {"document_id": doc_id}, timeout=WAIT)
    assert reply["ok"], reply
    return client


async def test_a_kill_mid_burst_loses_no_acknowledged_message(server: Server) -> None:
    server.env.update(RATE_CHAT_PER_SECOND="1000000", RATE_CHAT_BURST="1000000")
    await server.start()
    async with aiohttp.ClientSession(base_url=server.base) as http:
        api = Api(cast(TestClient[web.Request, web.Application], http))
        ann, ben = await api.user("ann"), await api.user("ben")
        doc_id = (await api.document(ann, "Burst"))["id"]
        await api.share(ann, doc_id, ben, "editor")
        people = [ann, ben] * (SENDERS // 2)
        clients = [await connected(server.base, user, doc_id) for user in people]

        attempted: dict[str, tuple[User, str]] = {}  # client_msg_id -> author, text
        acked: dict[str, dict[str, Any]] = {}
        enough = asyncio.Event()
        sends: set[asyncio.Task[None]] = set()

        async def send(client: socketio.AsyncClient, msg_id: str) -> None:
            payload = {"document_id": doc_id, "client_msg_id": msg_id, "text": f"text {msg_id}"}
            with contextlib.suppress(Exception):  # no ack: a dropped socket
                reply = await client.call("chat:send", payload, timeout=WAIT)
                if reply["ok"]:
                    acked[msg_id] = reply["data"]
                    if len(acked) >= KILL_AFTER:
                        enough.set()

        async def burst(index: int, client: socketio.AsyncClient) -> None:
            pending: set[asyncio.Task[None]] = set()
            for n in itertools.count():
                if not client.connected:
                    break
                msg_id = f"c{index}-m{n}"
                attempted[msg_id] = (people[index], f"text {msg_id}")
                task = asyncio.create_task(send(client, msg_id))
                pending.add(task)
                sends.add(task)
                if len(pending) >= IN_FLIGHT:
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

        bursts = [asyncio.create_task(burst(i, c)) for i, c in enumerate(clients)]
        await asyncio.wait_for(enough.wait(), WAIT)
        await server.kill()  # mid-burst: batches queued, committing and acknowledged
        # What was not acknowledged by now never will be: its outcome is unknown.
        for task in [*bursts, *sends]:
            task.cancel()
        await asyncio.gather(*bursts, *sends, return_exceptions=True)
        for client in clients:
            await client.disconnect()
        assert len(attempted) > len(acked) >= KILL_AFTER

        await server.start()  # the same port and database
        stored = await history(api, ann, doc_id)
        # No gap in seq, and every acknowledged message is there as acknowledged.
        assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))
        by_id = {m["client_msg_id"]: m for m in stored}
        assert len(by_id) == len(stored)
        for msg_id, ack in acked.items():
            assert (by_id[msg_id]["id"], by_id[msg_id]["seq"]) == (ack["id"], ack["seq"])

        # Every send retried after the restart: what was stored (acknowledged or not)
        # is answered as stored; the rest is stored now, after it, still gapless.
        retry = {user.id: await connected(server.base, user, doc_id) for user in (ann, ben)}
        for msg_id, (author, text) in attempted.items():
            payload = {"document_id": doc_id, "client_msg_id": msg_id, "text": text}
            reply = await retry[author.id].call("chat:send", payload, timeout=WAIT)
            assert reply["ok"], reply
            if msg_id in by_id:
                assert reply["data"]["seq"] == by_id[msg_id]["seq"], msg_id
        for client in retry.values():
            await client.disconnect()
        final = await history(api, ann, doc_id)
        assert [m["seq"] for m in final] == list(range(1, len(attempted) + 1))
        assert sorted(m["client_msg_id"] for m in final) == sorted(attempted)
        assert final[: len(stored)] == stored
