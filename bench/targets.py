"""The servers a scenario can run against, and how a client talks to each."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import LOAD_CPU, NODE_DIR, ROOT, ServerProcess, free_port, pinned

BENCH_JWT_SECRET = "bench-secret-" + "x" * 40
BENCH_PASSWORD = "bench password 1"
YJS_BASELINES = ("python-socketio + pycrdt", "Node y-socket.io")


@dataclass
class Target:
    """A running server and the event shapes a load worker needs for it."""

    name: str
    server: ServerProcess
    join: dict[str, Any]
    send_event: str
    template: dict[str, Any]
    path: list[str]
    listen: str
    extract: list[str]
    tokens: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # roomserver: the environment it was started with (its settings), for seed_users.
    env: dict[str, str] = field(default_factory=dict)


@asynccontextmanager
async def node_baseline(backlog: int = 0) -> AsyncIterator[Target]:
    """``backlog``: chat messages (in roomserver's wire shape) each join's ack carries."""
    port = free_port()
    server = await ServerProcess.start(
        "node socket.io", ["node", str(NODE_DIR / "server.mjs"), str(port), str(backlog)], port
    )
    try:
        yield _relay_target("Node socket.io 4", server)
    finally:
        await server.stop()


@asynccontextmanager
async def python_baseline() -> AsyncIterator[Target]:
    port = free_port()
    server = await ServerProcess.start(
        "python-socketio", [sys.executable, "-m", "bench.servers.plain_socketio", str(port)], port
    )
    try:
        yield _relay_target("plain python-socketio", server)
    finally:
        await server.stop()


def _relay_target(name: str, server: ServerProcess) -> Target:
    return Target(
        name=name,
        server=server,
        # A room id as long as roomserver's document ids (the relays echo it).
        join={"event": "join", "payload": {"room": str(uuid.uuid4())}},
        send_event="broadcast",
        template={},
        path=[],
        listen="broadcast",
        extract=["state"],
    )


LOAD_GENERATOR_LIMITS = {
    "MAX_CONNECTIONS": "100000",
    "MAX_CONNECTIONS_PER_USER": "100000",
    # Many editors share a few users: only the per-connection Yjs rate applies.
    "RATE_USER_FACTOR": "100000",
    **{
        f"RATE_{kind}_{what}": "1000000"
        for kind in ("ROOM", "CHAT", "HISTORY", "PRESENCE", "TYPING", "AI", "SESSION")
        for what in ("PER_SECOND", "BURST")
    },
}


@asynccontextmanager
async def ours(
    *,
    database_url: str | None = None,
    users: int = 10,
    settings: dict[str, str] | None = None,
    under: Sequence[str] = (),
) -> AsyncIterator[Target]:
    """roomserver on its embedded defaults (or ``database_url``, and any ``settings`` as
    environment variables), with a shared room; ``under``: a command that runs it (a
    profiler: bench/instructions.py), which may make it start many times slower."""
    data_dir = Path(tempfile.mkdtemp(prefix="bench-roomserver-"))
    port = free_port()
    env = {
        "DATA_DIR": str(data_dir),
        "PORT": str(port),
        "JWT_SECRET": BENCH_JWT_SECRET,
        "LOG_LEVEL": "WARNING",
        "ACCESS_TOKEN_TTL_SECONDS": "86400",
        # A load generator is a handful of users sending as fast as acks come back:
        # the caps and rates meant for people are lifted (the baselines have none).
        **LOAD_GENERATOR_LIMITS,
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(settings or {})
    migrate = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "migrate",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    if await migrate.wait() != 0:
        raise RuntimeError("python -m app migrate failed")
    server = await ServerProcess.start(
        "roomserver",
        [*under, sys.executable, "-m", "app"],
        port,
        env=env,
        ready_path="/health",
        ready_within=600 if under else 60,
    )
    try:
        tokens, document_id = await asyncio.to_thread(_room_with_members, server.url, users)
        yield Target(
            name="roomserver",
            server=server,
            join={"event": "join", "payload": {"document_id": document_id}},
            # presence:update is our plain relay: validated, then sent to the room.
            send_event="presence:update",
            template={"document_id": document_id, "state": {}},
            path=["state"],
            listen="presence:state",
            extract=["state"],
            tokens=tokens,
            extra={"document_id": document_id},
            env=env,
        )
    finally:
        await server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def api_call(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    """One JSON request to roomserver's REST API (blocking: run it in a thread)."""
    request = urllib.request.Request(base + path, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(request, data, timeout=30) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


def _room_with_members(base: str, users: int) -> tuple[list[str], str]:
    """Register ``users`` accounts, one document owned by the first, shared as editor."""

    def call(method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        return api_call(base, method, path, body, token)

    tokens, ids = [], []
    for index in range(users):
        credentials = {"username": f"bench{index}", "password": BENCH_PASSWORD}
        ids.append(call("POST", "/api/v1/auth/register", credentials)["id"])
        tokens.append(call("POST", "/api/v1/auth/login", credentials)["access_token"])
    document = call("POST", "/api/v1/documents", {"title": "bench"}, tokens[0])
    for user_id in ids[1:]:
        call(
            "PUT",
            f"/api/v1/documents/{document['id']}/members/{user_id}",
            {"role": "editor"},
            tokens[0],
        )
    return tokens, document["id"]


@dataclass(frozen=True)
class BenchUser:
    id: str
    username: str
    token: str


async def seed_users(target: Target, count: int, prefix: str) -> list[BenchUser]:
    """``count`` new users of roomserver ``target`` with access tokens, made beside the
    running server by ``python -m bench.seed_users`` (its docstring says how and why)."""
    process = await asyncio.create_subprocess_exec(
        *pinned([sys.executable, "-m", "bench.seed_users", str(count), prefix], LOAD_CPU),
        env={**os.environ, **target.env},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        limit=64 * 1024 * 1024,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"python -m bench.seed_users exited with {process.returncode}")
    return [BenchUser(**user) for user in json.loads(output)["users"]]


MEMBER_REQUESTS_AT_ONCE = 8


async def room_of(target: Target, members: list[BenchUser], title: str = "bench") -> str:
    """A new document owned by ``members[0]``, the others added as editors: the REST API's
    own routes (POST /documents, PUT /documents/{id}/members/{user_id}), some at once."""
    base, owner = target.server.url, members[0].token
    created = await asyncio.to_thread(
        api_call, base, "POST", "/api/v1/documents", {"title": title}, owner
    )
    document_id = str(created["id"])
    pending = iter(members[1:])

    async def adder() -> None:
        for member in pending:
            path = f"/api/v1/documents/{document_id}/members/{member.id}"
            await asyncio.to_thread(api_call, base, "PUT", path, {"role": "editor"}, owner)

    await asyncio.gather(*(adder() for _ in range(MEMBER_REQUESTS_AT_ONCE)))
    return document_id


# --- Yjs documents over the y-socket.io protocol ----------------------------------------


@dataclass
class YjsTarget:
    """A running server that speaks y-socket.io's protocol on ``/yjs|<document id>``."""

    name: str
    server: ServerProcess
    # The shared document the editors open (roomserver: all ``tokens`` are members).
    document_id: str
    # A new, empty document for the caller (roomserver: owned by ``tokens[0]``).
    new_document: Callable[[], Awaitable[str]]
    tokens: list[str] | None = None
    # How a document is stored (roomserver's GET /documents/{id}/storage); None: not at all.
    storage: Callable[[str], Awaitable[dict[str, Any]]] | None = None

    @staticmethod
    def namespace(document_id: str) -> str:
        return f"/yjs|{document_id}"


# A document nobody has open leaves roomserver's memory after this (default 30 s), so
# that a join can find it on disk only; nothing else differs from the defaults.
YJS_UNLOAD_AFTER_SECONDS = 1


@asynccontextmanager
async def yjs_ours() -> AsyncIterator[YjsTarget]:
    """roomserver on its embedded defaults (SQLite), with one document shared by 10 users."""
    settings = {"YJS_UNLOAD_AFTER_SECONDS": str(YJS_UNLOAD_AFTER_SECONDS)}
    async with ours(users=10, settings=settings) as relay:
        assert relay.tokens is not None
        base, owner = relay.server.url, relay.tokens[0]

        async def new_document() -> str:
            created = await asyncio.to_thread(
                api_call, base, "POST", "/api/v1/documents", {"title": "bench"}, owner
            )
            return str(created["id"])

        async def storage(document_id: str) -> dict[str, Any]:
            path = f"/api/v1/documents/{document_id}/storage"
            info: dict[str, Any] = await asyncio.to_thread(api_call, base, "GET", path, None, owner)
            return info

        yield YjsTarget(
            name="roomserver",
            server=relay.server,
            document_id=relay.extra["document_id"],
            new_document=new_document,
            tokens=relay.tokens,
            storage=storage,
        )


async def _any_document() -> str:
    return str(uuid.uuid4())  # the relays make a document on first use


@asynccontextmanager
async def yjs_python_baseline() -> AsyncIterator[YjsTarget]:
    port = free_port()
    server = await ServerProcess.start(
        "python yjs relay", [sys.executable, "-m", "bench.servers.plain_yjs", str(port)], port
    )
    try:
        yield YjsTarget(YJS_BASELINES[0], server, "bench", _any_document)
    finally:
        await server.stop()


@asynccontextmanager
async def yjs_node_baseline() -> AsyncIterator[YjsTarget]:
    """The reference server as the npm package ships it (``y-socket-io`` bin), no persistence."""
    port = free_port()
    server = await ServerProcess.start(
        "y-socket.io",
        ["node", str(NODE_DIR / "node_modules" / "y-socket.io" / "dist" / "server" / "server.js")],
        port,
        env={"HOST": "127.0.0.1", "PORT": str(port)},
    )
    try:
        yield YjsTarget(YJS_BASELINES[1], server, "bench", _any_document)
    finally:
        await server.stop()
