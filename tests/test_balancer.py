"""Several nodes behind a sticky load balancer: Debian's HAProxy in front of three
``python -m app`` processes (one PostgreSQL database, one Redis), with websocket and
long-polling clients through it.

Long-polling is a series of HTTP requests that must all reach the node holding the
Engine.IO session, so the balancer pins a client to a node by a cookie it inserts
(``cookie SERVERID insert``), as python-engineio's and socket.io's docs on sticky
sessions ask; a websocket is one connection and needs no pin. HAProxy runs in the
foreground on free ports with its configuration in the test's temporary folder, and
is ended by its PID.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import aiohttp
import pytest
import socketio

from roomclient import RoomClient
from tests.cluster_nodes import (
    StartNodes,
    api_of,
    three_members,
)
from tests.conftest import service_missing
from tests.helpers import Api, User, eventually
from tests.test_cli import free_port
from tests.test_yjs_js import Server

pytestmark = pytest.mark.slow

WAIT = 15.0


def haproxy_config(port: int, nodes: list[Server]) -> str:
    servers = "\n".join(
        f"    server n{i} {node.base.removeprefix('http://')} check inter 1s cookie n{i}"
        for i, node in enumerate(nodes)
    )
    return f"""\
global
    maxconn 2000

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    # An upgraded websocket is a tunnel: idle while the room is quiet.
    timeout tunnel 1h
    # A pinned node that went down: the client is sent to another one.
    option redispatch

frontend rooms
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance roundrobin
    # Long-polling needs every request of a session on one node: pinned by a cookie.
    cookie SERVERID insert indirect nocache
    # A draining node (SIGTERM) answers 503 here and gets no new clients.
    option httpchk GET /ready
    http-check expect status 200
{servers}
"""


class Balancer:
    """``haproxy -db`` (foreground) on a free port; stopped by its own PID."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.port = free_port()
        # A host name, not an IP: aiohttp's cookie jar (the clients') refuses cookies
        # from an IP address, as browsers pin by host name too.
        self.base = f"http://localhost:{self.port}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, nodes: list[Server]) -> None:
        haproxy = shutil.which("haproxy") or "haproxy"
        self.config.write_text(haproxy_config(self.port, nodes))
        log = self.config.with_suffix(".log")
        with log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                haproxy, "-db", "-f", str(self.config), stdout=out, stderr=out
            )

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.fixture
async def balancer(tmp_path: Path) -> AsyncIterator[Balancer]:
    if shutil.which("haproxy") is None:
        service_missing("haproxy", FileNotFoundError("haproxy (apt-get install haproxy)"))
    balancer = Balancer(tmp_path / "haproxy.cfg")
    try:
        yield balancer
    finally:
        await balancer.stop()


async def _every_node_ready(balancer: Balancer, nodes: list[Server]) -> None:
    """Each node answers through the balancer (HAProxy's checks found them up): a
    request without a cookie is given the node's."""
    assert balancer.process is not None and balancer.process.returncode is None, "exited"
    seen = set()
    # No cookie kept: each request is balanced afresh (and told its node's cookie).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        for _ in range(3 * len(nodes)):
            try:
                async with http.get(f"{balancer.base}/ready") as response:
                    assert response.status == 200
                    cookie = response.cookies.get("SERVERID")
                    seen.add(cookie.value if cookie is not None else "")
            except aiohttp.ClientError as exc:
                raise AssertionError(f"not listening yet: {exc}") from exc
    assert len(seen) == len(nodes), seen


async def _connections(node: Server) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{node.base}/metrics") as response:
        text = await response.text()
    match = re.search(r'^socketio_connections\{namespace="/"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_websocket_and_polling_clients_share_a_room_through_haproxy(
    start_nodes: StartNodes,
    shared_redis: str,
    balancer: Balancer,
) -> None:
    nodes = await start_nodes(3, shared_redis)
    await balancer.start(nodes)
    await eventually(lambda: _every_node_ready(balancer, nodes), timeout=WAIT, interval=0.2)
    async with api_of(nodes[0]) as api:
        users, doc_id = await _six_members(api)
    opened: list[RoomClient] = []
    try:
        for i, user in enumerate(users):
            transports = ["websocket"] if i % 2 == 0 else ["polling"]
            client = RoomClient(balancer.base, user.access_token, transports=transports)
            opened.append(client)
            await client.connect()
            await client.join(doc_id)
        assert {client.sio.transport() for client in opened} == {"websocket", "polling"}
        # Round robin spread them: the room spans nodes, joined through Redis.
        counts = [await _connections(node) for node in nodes]
        assert sum(counts) == len(opened) and sum(1 for n in counts if n) >= 2, counts
        for i, client in enumerate(opened):
            await client.send(doc_id, f"hello from {i}")
        expected = {f"hello from {i}" for i in range(len(opened))}

        def everyone_has_everything() -> None:
            for client in opened:
                assert {m["text"] for m in client.room(doc_id).messages} == expected

        await eventually(everyone_has_everything, timeout=WAIT)
        # The polling clients stayed on their node throughout (no session lost).
        for client in opened:
            assert client.connected

        # The busiest node stopped (SIGTERM: /ready 503, then closed): the balancer
        # sends new clients, websocket and polling, to the others; they find the room's
        # history and chat with the room.
        busiest = max(range(len(nodes)), key=lambda i: counts[i])
        await nodes[busiest].stop()
        late = []
        for i, user in enumerate(users[:2]):
            transports = ["websocket"] if i % 2 == 0 else ["polling"]
            client = RoomClient(balancer.base, user.access_token, transports=transports)
            opened.append(client)
            late.append(client)
            await eventually(partial(_connect, client), timeout=WAIT, interval=0.2)
            await client.join(doc_id)
        await late[0].send(doc_id, "after the stop")
        expected.add("after the stop")

        def late_ones_have_everything() -> None:
            for client in late:
                assert {m["text"] for m in client.room(doc_id).messages} == expected

        await eventually(late_ones_have_everything, timeout=WAIT)
    finally:
        for client in opened:
            await client.close()


async def _connect(client: RoomClient) -> None:
    try:
        await client.connect()
    except socketio.exceptions.ConnectionError as exc:
        raise AssertionError(f"not connected: {exc}") from exc


async def _six_members(api: Api) -> tuple[list[User], str]:
    ann, ben, cat, doc_id = await three_members(api)
    users = [ann, ben, cat]
    for name in ("dan", "eve", "fay"):
        users.append(await api.user(name))
        await api.share(ann, doc_id, users[-1], "editor")
    return users, doc_id
