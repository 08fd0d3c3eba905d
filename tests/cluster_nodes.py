"""The cluster tests' nodes: ``python -m app`` processes on one PostgreSQL database
and one Redis (or a ``redis-server`` of a test's own), their clients and what the tests
read of them. A pytest plugin (tests/conftest.py loads it): the fixtures are there for
every test module that asks for them."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.config import Settings
from realtime.cluster import codec
from roomclient import RoomClient
from tests.conftest import (
    REDIS_URL,
    TEST_JWT_SECRET,
    _migrate,
    _truncate,
    run_blocking,
    service_missing,
)
from tests.helpers import Api, User, eventually
from tests.test_cli import free_port
from tests.test_yjs_js import Server

WAIT = 10.0  # seconds any one delivery may take before the test fails
PREFIX = f"rs-test-{uuid.uuid4().hex[:8]}"  # this run's channels


@pytest.fixture(scope="module")
def cluster_database(make_postgres_database: Callable[[], str]) -> str:
    """This module's PostgreSQL database, migrated once (emptied by each test)."""
    url = make_postgres_database()
    run_blocking(_migrate(url))
    return url


@pytest.fixture
async def shared_redis() -> str:
    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, RedisError) as exc:
        service_missing("Redis", exc)
    finally:
        await client.aclose()
    return REDIS_URL


StartNodes = Callable[..., Awaitable[list[Server]]]


@pytest.fixture
async def start_nodes(cluster_database: str, tmp_path: Path) -> AsyncIterator[StartNodes]:
    """``await start_nodes(count, redis_url, **settings)``: server processes on one
    database and one Redis, all stopped (by PID) when the test ends."""
    await _truncate(cluster_database)
    started: list[Server] = []

    async def start(count: int, redis_url: str, **settings: str) -> list[Server]:
        nodes = []
        for _ in range(count):
            index = len(started)
            env = {key: value for key, value in os.environ.items() if key.isupper()}
            for key in ("ENV", "LOG_FORMAT", "CORS_ORIGINS"):
                env.pop(key, None)
            env.update(
                DATABASE_URL=cluster_database,
                DATA_DIR=str(tmp_path / f"node{index}"),
                JWT_SECRET=TEST_JWT_SECRET,
                HOST="127.0.0.1",
                PORT=str(free_port()),
                LOG_LEVEL="INFO",
                REDIS_URL=redis_url,
                CLUSTER_CHANNEL_PREFIX=PREFIX,
                **{name.upper(): "1000000" for name in _UNLIMITED},
                **settings,
            )
            node = Server(env, tmp_path / f"node{index}.log")
            started.append(node)
            nodes.append(node)
        await asyncio.gather(*(node.start() for node in nodes))
        return nodes

    yield start
    for node in started:
        await node.stop()


_UNLIMITED = [
    name
    for name in Settings.model_fields
    if name.startswith(("rate_", "login_", "registrations_"))
    and name.endswith(("_per_second", "_per_minute", "_per_hour", "_burst"))
]


@asynccontextmanager
async def api_of(node: Server) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(base_url=node.base) as http:
        # Api speaks to any client with TestClient's request(): a session with a base URL.
        yield Api(cast(TestClient[web.Request, web.Application], http))


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[Server, User], Awaitable[RoomClient]]]:
    opened: list[RoomClient] = []

    async def open_client(node: Server, user: User) -> RoomClient:
        client = RoomClient(node.base, user.access_token)
        opened.append(client)
        await client.connect()
        return client

    yield open_client
    for client in opened:
        await client.close()


async def metric(node: Server, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{node.base}/metrics") as response:
        text = await response.text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


def channel(kind: str, document_id: str) -> bytes:
    return codec.channel_of(PREFIX, (kind, uuid.UUID(document_id)))


async def subscribers(redis_url: str, name: bytes) -> int:
    client = Redis.from_url(redis_url)
    try:
        counts = await client.pubsub_numsub(name)
    finally:
        await client.aclose()
    return int(counts[0][1])


def chat_texts(client: RoomClient) -> list[str]:
    return [data["message"]["text"] for event, data in client.events if event == "chat:message"]


async def three_members(api: Api) -> tuple[User, User, User, str]:
    ann, ben, doc = await api.room("editor")
    cat = await api.user("cat")
    await api.share(ann, doc["id"], cat, "editor")
    return ann, ben, cat, str(doc["id"])


class RedisProcess:
    """A ``redis-server`` of this test's own on a free port; stopped by its own PID.
    ``options`` come after the defaults (a later option wins); ``config``, a file,
    comes first (a Sentinel's, with ``--sentinel`` among the options)."""

    def __init__(self, directory: Path, *options: str, config: Path | None = None) -> None:
        self.port = free_port()
        self.directory = directory
        self.options = options
        self.config = config
        self.url = f"redis://127.0.0.1:{self.port}/0"  # how to reach it (and check it)
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "redis-server",
            *([str(self.config)] if self.config else []),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            *self.options,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

        async def answers() -> None:
            client = Redis.from_url(self.url)
            try:
                assert await client.ping()
            except (OSError, RedisError) as exc:
                raise AssertionError(repr(exc)) from exc
            finally:
                await client.aclose()

        await eventually(answers, timeout=WAIT, interval=0.05)

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), WAIT)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    if shutil.which("redis-server") is None:
        service_missing("redis-server", FileNotFoundError("redis-server"))
    redis = RedisProcess(tmp_path)
    try:
        await redis.start()  # stopped below even if it never answered
        yield redis
    finally:
        await redis.stop()
