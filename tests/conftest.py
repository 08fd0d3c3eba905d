"""Shared fixtures: real SQLite and PostgreSQL databases built by the migrations.

Each test run gets its own PostgreSQL database (dropped at the end) and each test
its own SQLite file. PostgreSQL or Redis missing is a skip, or with
``REQUIRE_SERVICES=1`` (as in ``.ci/run``) a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from sqlalchemy import text

from app.config import Settings
from app.main import create_app
from app.server import event_loop_factory
from roomclient import DocumentClient, RoomClient
from storage.db import create_engine
from storage.migrate import upgrade
from storage.models import Base
from tests.fake_anthropic import FakeAnthropic
from tests.helpers import Api, User

if TYPE_CHECKING:
    from tests.js_client import NodeProgram

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
POSTGRES_ADMIN_DSN = os.environ.get(
    "TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_JWT_SECRET = "test-secret-" + "x" * 40
# Passwords hashed at Argon2id's least cost, here and in every server the tests start
# (they inherit the environment): a hash's strength is not what they test, and at the
# default cost (3 passes over 64 MiB) hashing took a quarter of the suite's time.
CHEAP_PASSWORD_HASHES = {"PASSWORD_HASH_TIME_COST": "1", "PASSWORD_HASH_MEMORY_KIB": "32"}
os.environ.update(CHEAP_PASSWORD_HASHES)
BACKENDS = ["sqlite", "postgres"]
T = TypeVar("T")

# The cluster tests' nodes and their fixtures (several test modules use them).
pytest_plugins = ["tests.cluster_nodes"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every test's loop is the one the server runs on (``EVENT_LOOP``, as in the
    environment: uvloop where it is installed; ``EVENT_LOOP=asyncio`` for the other)."""
    choice = os.environ.get("EVENT_LOOP", "auto")
    return {choice: event_loop_factory(choice)}


def run_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion on a loop of its own, in another thread.

    Session fixtures are set up lazily, possibly while a test's loop is running in
    this thread, where ``asyncio.run`` is not allowed.
    """
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, coroutine).result()


def service_missing(what: str, error: BaseException) -> None:
    message = f"{what} is not reachable ({error!r})"
    if REQUIRE_SERVICES:
        pytest.fail(message + " and REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


# --- PostgreSQL ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin DSN, once reachable."""

    async def probe() -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=3)
        await connection.close()

    try:
        run_blocking(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        service_missing("PostgreSQL", exc)
    return POSTGRES_ADMIN_DSN


@pytest.fixture(scope="session")
def make_postgres_database(postgres_server: str) -> Iterator[Callable[[], str]]:
    """Creates uniquely named databases, all dropped when the run ends."""
    created: list[str] = []

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(postgres_server)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    def make() -> str:
        name = f"rs_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        run_blocking(admin(f'CREATE DATABASE "{name}"'))
        created.append(name)
        base = postgres_server.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        return f"{base}/{name}"

    yield make
    for name in created:
        run_blocking(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def migrated_postgres_url(make_postgres_database: Callable[[], str]) -> str:
    url = make_postgres_database()
    run_blocking(_migrate(url))
    return url


# --- SQLite ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.sqlite3"
    run_blocking(_migrate(sqlite_url(path)))
    return path


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await upgrade(engine)
    finally:
        # Closing SQLite's last connection folds its WAL into the main file,
        # so a plain copy of that file is the whole database.
        await engine.dispose()


async def _truncate(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A migrated, empty database of the parametrised backend."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("migrated_sqlite_template")
        path = tmp_path / "test.sqlite3"
        shutil.copyfile(template, path)
        yield sqlite_url(path)
    else:
        url: str = request.getfixturevalue("migrated_postgres_url")
        await _truncate(url)
        yield url


# --- Redis -----------------------------------------------------------------------------


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A Redis URL with a key prefix of its own is not needed yet: only PING is used."""
    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, ConnectionError) as exc:
        service_missing("Redis", exc)
    finally:
        await client.aclose()
    yield REDIS_URL


# --- the application -------------------------------------------------------------------


# The socket command rates and the sign-in throttles, out of the way of tests that
# are not about them (a test sends and signs in far faster than a person, all from
# 127.0.0.1); tests of the limits pass their own values.
UNLIMITED_RATES: dict[str, Any] = {
    name: 1_000_000
    for name in Settings.model_fields
    if name.startswith(("rate_", "login_", "registrations_"))
    and name.endswith(("_per_second", "_per_minute", "_per_hour", "_burst"))
}


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "jwt_secret": TEST_JWT_SECRET,
        "env": "development",
        "redis_url": None,
        "cors_origins": [],
        "log_format": "text",
        **UNLIMITED_RATES,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path / "data")


AppFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def start_app(
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
    database_url: str,
    tmp_path: Path,
) -> AppFactory:
    """Start the real app on a random 127.0.0.1 port, with setting overrides."""

    async def start(**overrides: Any) -> TestClient[web.Request, web.Application]:
        return await aiohttp_client(
            create_app(make_settings(database_url, tmp_path / "data", **overrides))
        )

    return start


@pytest.fixture
async def client(start_app: AppFactory) -> TestClient[web.Request, web.Application]:
    return await start_app()


@pytest.fixture
def api(client: TestClient[web.Request, web.Application]) -> Api:
    return Api(client)


ClientFactory = Callable[..., Awaitable[RoomClient]]


ConnectOn = Callable[[Api], ClientFactory]


@pytest.fixture
async def connect_on() -> AsyncIterator[ConnectOn]:
    """``connect_on(api)(user)``: a real Socket.IO connection (the project's RoomClient)
    to the app behind ``api``; all closed when the test ends."""
    opened: list[RoomClient] = []

    def factory(api: Api) -> ClientFactory:
        url = str(api.client.make_url("/")).rstrip("/")

        async def open_client(user: User, **options: Any) -> RoomClient:
            room_client = RoomClient(url, user.access_token, **options)
            opened.append(room_client)
            await room_client.connect()
            return room_client

        return open_client

    yield factory
    for room_client in opened:
        await room_client.close()


@pytest.fixture
def connect(
    client: TestClient[web.Request, web.Application],
    connect_on: ConnectOn,
) -> ClientFactory:
    """Open real Socket.IO connections (the project's RoomClient) to the test app."""
    return connect_on(Api(client))


DocumentFactory = Callable[..., Awaitable[DocumentClient]]
OpenDocumentOn = Callable[..., Awaitable[DocumentClient]]


@pytest.fixture
async def open_document_on() -> AsyncIterator[OpenDocumentOn]:
    """``await open_document_on(app_client, user, document_id)``: a real y-socket.io
    connection (the project's DocumentClient), synced; all closed when the test ends."""
    opened: list[DocumentClient] = []

    async def open_client(
        client: TestClient[web.Request, web.Application], user: User, document_id: str
    ) -> DocumentClient:
        url = str(client.make_url("/")).rstrip("/")
        document = DocumentClient(url, user.access_token, document_id)
        opened.append(document)
        await document.connect()
        await asyncio.wait_for(document.synced.wait(), 10)
        return document

    yield open_client
    for document in opened:
        await document.close()


@pytest.fixture
def open_document(
    client: TestClient[web.Request, web.Application],
    open_document_on: OpenDocumentOn,
) -> DocumentFactory:
    """``await open_document(user, document_id)`` on the default test app."""

    async def open_client(user: User, document_id: str) -> DocumentClient:
        return await open_document_on(client, user, document_id)

    return open_client


# --- Node processes running the official JavaScript clients (tests/js_client.py) -------

P = TypeVar("P", bound="NodeProgram")


class NodePrograms(Protocol):
    async def __call__(self, kind: type[P], url: str) -> P: ...


@pytest.fixture
async def node_programs(tmp_path: Path) -> AsyncIterator[NodePrograms]:
    """``await node_programs(JsClient, url)``: a Node client process (not connected yet)
    for the server at ``url``, ended when the test ends."""
    from tests.js_client import node_with_modules  # it imports this module

    node = node_with_modules()
    started: list[NodeProgram] = []

    async def start(kind: type[P], url: str) -> P:
        name = f"{kind.__name__}{len(started) + 1}"
        program = await kind.start(node, name, url, tmp_path / f"{name}.stderr")
        started.append(program)
        return program

    yield start
    for program in started:
        await program.close()


# --- the local stand-in for the Anthropic Messages API (tests/fake_anthropic.py) ------


@pytest.fixture
async def anthropic_server() -> AsyncIterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()
    server = TestServer(fake.app, host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("")).rstrip("/")
    await server.close()


ClaudeFactory = Callable[..., Awaitable[tuple[FakeAnthropic, Api]]]


@pytest.fixture
def start_claude(
    anthropic_server: tuple[FakeAnthropic, str], start_app: AppFactory
) -> ClaudeFactory:
    """``await start_claude(**settings)``: the app with Claude configured, pointed at the
    local stand-in, with setting overrides."""
    fake, url = anthropic_server

    async def start(**settings: Any) -> tuple[FakeAnthropic, Api]:
        client = await start_app(anthropic_api_key="test-key", anthropic_base_url=url, **settings)
        return fake, Api(client)

    return start


@pytest.fixture
async def claude(start_claude: ClaudeFactory) -> tuple[FakeAnthropic, Api]:
    """The app with Claude configured, on its default settings."""
    return await start_claude()
