"""Yjs documents with the real JavaScript provider (y-socket.io 1.1.3's unmodified
``SocketIOProvider`` with yjs, run by Node) and the project's Python
``DocumentClient``, against the real app on SQLite and PostgreSQL; the last test
runs the server as a process and kills it. See tests/yjs_js.py for the driving.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pycrdt import Doc, Text

from roomclient import DocumentClient
from storage.db import create_engine, create_sessionmaker
from storage.repositories import crdt as crdt_repo
from tests.conftest import TEST_JWT_SECRET, AppFactory, DocumentFactory, NodePrograms
from tests.helpers import Api, User, equal, eventually
from tests.test_cli import ROOT, free_port, wait_until_up
from tests.yjs_js import YjsJsClient

pytestmark = pytest.mark.slow

JsFactory = Callable[..., Awaitable[YjsJsClient]]
ProviderFactory = Callable[[str], Awaitable[YjsJsClient]]
WAIT = 10.0  # seconds any one convergence may take before the test fails


@pytest.fixture
async def client(start_app: AppFactory) -> TestClient[web.Request, web.Application]:
    """The app, with no snapshot during a test: a snapshot empties the update log, and
    the tests count its rows (GET .../storage) to tell what was stored."""
    return await start_app(yjs_snapshot_debounce_seconds=3600, yjs_snapshot_max_delay_seconds=3600)


@pytest.fixture
def providers(node_programs: NodePrograms) -> ProviderFactory:
    """``await providers(url)``: a Node process with a provider for the server at
    ``url`` (not connected yet); every one is ended when the test ends."""

    async def start(url: str) -> YjsJsClient:
        return await node_programs(YjsJsClient, url)

    return start


@pytest.fixture
async def js(
    providers: ProviderFactory,
    client: TestClient[web.Request, web.Application],
) -> JsFactory:
    """``await js(user, document_id)``: a provider of the test app's document,
    connected as ``user`` and synced."""
    url = str(client.make_url("/")).rstrip("/")

    async def open_js(user: User, document_id: str) -> YjsJsClient:
        provider = await providers(url)
        await provider.synced_as(document_id, user.access_token)
        return provider

    return open_js


async def shared(api: Api, member_role: str) -> tuple[User, User, str]:
    """ann owns a document shared with ben as ``member_role``: (ann, ben, its id)."""
    ann, ben, doc = await api.room(member_role)
    return ann, ben, str(doc["id"])


async def content(api: Api, user: User, document_id: str) -> str:
    body = await api.call("GET", f"/api/v1/documents/{document_id}/content", user=user)
    return str(body["text"])


async def update_count(api: Api, user: User, document_id: str) -> int:
    body = await api.call("GET", f"/api/v1/documents/{document_id}/storage", user=user)
    return int(body["update_count"])


def text_of(update: bytes) -> str:
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return str(doc.get("content", type=Text))


def at_either_end(text: Text, *, snippet: str, end: bool) -> None:
    text.insert(len(text) if end else 0, snippet)


def text_is(client: DocumentClient, expected: str) -> None:
    assert client.text == expected


async def converged(
    expected: str, *clients: YjsJsClient | DocumentClient, within: float = WAIT
) -> None:
    """Every client's text becomes ``expected``."""
    for one in clients:
        if isinstance(one, YjsJsClient):
            await one.wait_text(expected, within=within)
        else:
            await eventually(partial(text_is, one, expected), timeout=within)


async def until_state(provider: YjsJsClient, client_id: int, state: object) -> None:
    """Wait until ``provider`` has ``state`` as ``client_id``'s awareness state (None:
    until it has none)."""

    async def check() -> dict[int, Any]:
        states = await provider.awareness()
        assert states.get(client_id) == state, (provider.name, states)
        return states

    _: dict[int, Any] = await eventually(check, timeout=WAIT)


async def same_everywhere(*clients: YjsJsClient | DocumentClient) -> str:
    """Wait until every client has the same text; that text."""

    async def texts() -> str:
        seen = [c.text if isinstance(c, DocumentClient) else await c.text() for c in clients]
        assert len(set(seen)) == 1, seen
        return seen[0]

    return await eventually(texts, timeout=WAIT, interval=0.05)


# --- converging ------------------------------------------------------------------------


async def test_two_providers_and_a_python_client_converge(
    api: Api, js: JsFactory, open_document: DocumentFactory
) -> None:
    ann, ben, doc_id = await shared(api, "editor")
    a, b = await js(ann, doc_id), await js(ben, doc_id)
    py = await open_document(ann, doc_id)

    # Concurrent: each types without waiting for the others (at the ends, so that no
    # insert lands inside another and every snippet stays whole).
    for i in range(5):
        await a.insert(0, f"a{i} ")
        await b.append(f" b{i}")
        py.edit(partial(at_either_end, snippet=f"<p{i}>", end=i % 2 == 1))
    final = await same_everywhere(a, b, py)
    snippets = [f"a{i} " for i in range(5)] + [f" b{i}" for i in range(5)]
    snippets += [f"<p{i}>" for i in range(5)]
    assert all(final.count(snippet) == 1 for snippet in snippets), final
    assert len(final) == sum(map(len, snippets))
    assert await content(api, ann, doc_id) == final
    # The whole documents are the same, not only their texts.
    assert text_of(await a.state()) == text_of(await b.state()) == final
    assert await a.errors() == [] and await b.errors() == [] and py.errors == []

    # Deletions converge too. Both indexes come from the text all three hold now: b
    # deletes first, and " b4" comes after "a4 ", so b's deletion, whenever it reaches
    # a, does not move a's. (b used to read its own text and then delete, and a's
    # deletion could arrive in between: b deleted the three characters after " b4".)
    await b.delete(final.index(" b4"), len(" b4"))
    await a.delete(final.index("a4 "), len("a4 "))
    after = await same_everywhere(a, b, py)
    assert "a4 " not in after and " b4" not in after and len(after) == len(final) - 6
    await eventually(lambda: equal(py.text, after))
    assert await content(api, ann, doc_id) == after


async def test_offline_edits_merge_on_reconnect(
    api: Api, js: JsFactory, open_document: DocumentFactory
) -> None:
    ann, ben, doc_id = await shared(api, "editor")
    a, b = await js(ann, doc_id), await js(ben, doc_id)
    py = await open_document(ann, doc_id)
    await a.insert(0, "shared. ")
    await converged("shared. ", a, b, py)

    await b.disconnect()
    await b.insert(0, "[b offline 1]")
    await b.append("[b offline 2]")
    await a.append("[a online]")
    py.edit(lambda text: text.insert(0, "[py online]"))
    await converged("[py online]shared. [a online]", a, py)
    assert "[a online]" not in await b.text()  # b is really offline
    before = await update_count(api, ann, doc_id)

    rejoined = await b.reconnect()
    assert rejoined["synced"] is True
    merged = await same_everywhere(a, b, py)
    for snippet in ("[b offline 1]", "[b offline 2]", "[a online]", "[py online]", "shared. "):
        assert merged.count(snippet) == 1, merged
    assert merged.endswith("[b offline 2]") or merged.endswith("[a online]"), merged
    assert await content(api, ann, doc_id) == merged
    assert await update_count(api, ann, doc_id) > before
    # And b keeps editing live after the reconnect.
    await b.insert(0, "again ")
    await converged("again " + merged, a, b, py)
    assert [name for name, _ in await b.events() if name in ("$connect", "$disconnect")] == [
        "$connect",
        "$disconnect",
        "$connect",
    ]


async def test_late_joiner_receives_everything(
    api: Api, js: JsFactory, open_document: DocumentFactory
) -> None:
    ann, ben, doc_id = await shared(api, "editor")
    a = await js(ann, doc_id)
    py = await open_document(ben, doc_id)
    lines = "".join(f"line {i}\n" for i in range(20))
    for i in range(20):
        await a.append(f"line {i}\n")
    # The title goes before the lines once they are here: inserted into an empty copy,
    # it would be concurrent with them, placed before or after by the clients' ids.
    await eventually(lambda: equal(py.text, lines))
    py.edit(lambda text: text.insert(0, "title\n"))
    expected = "title\n" + lines
    await converged(expected, a, py)

    late = await js(ben, doc_id)
    assert await late.wait_text(expected) == expected
    assert text_of(await late.state()) == expected
    await late.append("late\n")
    await converged(expected + "late\n", a, py, late)
    assert await content(api, ann, doc_id) == expected + "late\n"


# --- viewers ---------------------------------------------------------------------------


async def test_a_viewers_edit_is_refused_and_goes_nowhere(
    api: Api, js: JsFactory, open_document: DocumentFactory
) -> None:
    ann, ben, doc_id = await shared(api, "viewer")
    editor = await js(ann, doc_id)
    py = await open_document(ann, doc_id)
    await editor.insert(0, "written by ann")
    viewer = await js(ben, doc_id)
    await converged("written by ann", viewer, py)
    stored = await update_count(api, ann, doc_id)

    await viewer.insert(0, "VIEWER ")
    [error] = await viewer.wait_event("error")
    assert error["code"] == "read_only" and error["event"] == "sync-update"
    assert error["message"]
    await viewer.insert(0, "AGAIN ")  # refused too, and told once per connection
    # The server handles one connection's messages in order: once the editor has the
    # viewer's awareness state, the server has handled the viewer's second edit.
    await viewer.set_awareness({"user": "ben"})

    await until_state(editor, viewer.client_id, {"user": "ben"})
    assert await viewer.errors() == [error]
    assert await content(api, ann, doc_id) == "written by ann"
    assert await update_count(api, ann, doc_id) == stored

    await editor.append(".")  # a real edit: the others see that one only
    await converged("written by ann.", editor, py)
    await viewer.wait_text("AGAIN VIEWER written by ann.")  # its own copy keeps its edits
    assert await content(api, ann, doc_id) == "written by ann."
    assert await update_count(api, ann, doc_id) == stored + 1
    assert "VIEWER" not in text_of(await editor.state())
    assert await editor.errors() == [] and py.errors == []
    assert await viewer.errors() == [error]


async def test_demoted_then_removed_member_is_told_and_let_go(
    api: Api, js: JsFactory, open_document: DocumentFactory
) -> None:
    ann, ben, doc_id = await shared(api, "editor")
    py = await open_document(ann, doc_id)
    b = await js(ben, doc_id)
    await b.append("by ben")
    await converged("by ben", py)
    member = f"/api/v1/documents/{doc_id}/members/{ben.id}"

    await api.call("PUT", member, user=ann, json={"role": "viewer"})  # while connected
    await b.append("!")
    [error] = await b.wait_event("error")
    assert error["code"] == "read_only" and error["event"] == "sync-update"

    await api.call("DELETE", member, user=ann, expect=204)
    [ended] = await b.wait_event("session:ended")
    assert ended["code"] == "removed" and ended["message"]
    # A disconnect by the server: socket.io clients do not reconnect by themselves.
    assert await b.wait_event("$disconnect") == ["io server disconnect"]
    told = [name for name, _ in await b.events() if name in ("session:ended", "$disconnect")]
    assert told == ["session:ended", "$disconnect"]
    assert await content(api, ann, doc_id) == "by ben" == py.text


# --- awareness -------------------------------------------------------------------------


async def test_awareness_reaches_the_others_and_leaves_with_its_client(
    api: Api, js: JsFactory, open_document: DocumentFactory
) -> None:
    ann, ben, doc_id = await shared(api, "editor")
    a, b = await js(ann, doc_id), await js(ben, doc_id)
    py = await open_document(ben, doc_id)
    a_id = a.client_id
    cursor = {"user": {"name": "ann", "color": "#ff0000"}, "cursor": {"index": 3}}

    await a.set_awareness(cursor)

    await until_state(b, a_id, cursor)
    await eventually(lambda: equal(py.awareness.states.get(a_id), cursor), timeout=WAIT)

    await a.disconnect()

    # Well within the 30 s after which clients drop silent states themselves.
    await until_state(b, a_id, None)
    await eventually(lambda: equal(a_id in py.awareness.states, False), timeout=WAIT)


async def test_a_provider_leaving_takes_no_one_elses_awareness_with_it(
    api: Api, js: JsFactory, open_document: DocumentFactory
) -> None:
    ann, ben, doc_id = await shared(api, "editor")
    py = await open_document(ann, doc_id)
    py.set_awareness({"user": "py"})
    watcher, leaver = await js(ann, doc_id), await js(ben, doc_id)

    await until_state(leaver, py.doc.client_id, {"user": "py"})
    # The server handles one connection's messages in order: once the watcher has
    # the leaver's own state, the server has had the leaver's copy of py's too.
    await leaver.set_awareness({"user": "leaver"})
    await until_state(watcher, leaver.client_id, {"user": "leaver"})

    await leaver.disconnect()
    await until_state(watcher, leaver.client_id, None)
    assert (await watcher.awareness()).get(py.doc.client_id) == {"user": "py"}
    assert py.awareness.states.get(py.doc.client_id) == {"user": "py"}


# --- a server restart ------------------------------------------------------------------


class Server:
    """``python -m app`` as a child process on a fixed port; ended by its own PID."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.base = f"http://127.0.0.1:{env['PORT']}"
        self.process: asyncio.subprocess.Process | None = None

    async def _spawn(self, *args: str) -> asyncio.subprocess.Process:
        with self.log.open("ab") as log:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "app", *args, env=self.env, cwd=ROOT, stdout=log, stderr=log
            )

    async def run(self, *args: str, timeout: float = 60) -> int:  # noqa: ASYNC109
        """Run a command (``migrate``) to its end; its exit status."""
        process = await self._spawn(*args)
        try:
            return await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise

    async def start(self) -> None:
        assert self.process is None or self.process.returncode is not None
        self.process = await self._spawn()
        await wait_until_up(self.base, self.process.pid)

    async def kill(self) -> None:
        """SIGKILL: no shutdown work at all, as in a crash or an OOM kill."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(self.process.wait(), 10) == -signal.SIGKILL

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()


async def stored_text(database_url: str, document_id: str) -> str:
    """The text of the document as its snapshot and update log have it."""
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            stored = await crdt_repo.load(session, uuid.UUID(document_id))
    finally:
        await engine.dispose()
    doc: Doc[Any] = Doc()
    for update in ([stored.snapshot] if stored.snapshot else []) + [u for _, u in stored.updates]:
        doc.apply_update(update)
    return str(doc.get("content", type=Text))


@pytest.fixture
async def server(backend: str, database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    """A server process (not started) migrated by ``python -m app migrate``: on a
    SQLite file of its own in tmp_path, or this run's PostgreSQL test database
    (already migrated, emptied)."""
    if backend == "sqlite":
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'server.sqlite3'}"
    env = {key: value for key, value in os.environ.items() if key.isupper()}
    for key in ("REDIS_URL", "ENV", "LOG_FORMAT", "CORS_ORIGINS"):
        env.pop(key, None)
    env.update(
        DATABASE_URL=database_url,
        DATA_DIR=str(tmp_path / "server-data"),
        JWT_SECRET=TEST_JWT_SECRET,
        HOST="127.0.0.1",
        PORT=str(free_port()),
        LOG_LEVEL="INFO",
    )
    process = Server(env, tmp_path / "server.log")
    assert await process.run("migrate") == 0, process.log.read_text()[-2000:]
    try:
        yield process
    finally:
        await process.stop()


async def test_a_killed_server_loses_nothing_relayed_and_providers_carry_on(
    server: Server, providers: ProviderFactory
) -> None:
    await server.start()
    async with aiohttp.ClientSession(base_url=server.base) as http:
        # Api speaks to any client with TestClient's request(); a session with a base
        # URL is one.
        api = Api(cast(TestClient[web.Request, web.Application], http))
        ann, ben, doc_id = await shared(api, "editor")
        a, b = await providers(server.base), await providers(server.base)
        await a.synced_as(doc_id, ann.access_token)
        await b.synced_as(doc_id, ben.access_token)

        for i in range(5):
            await a.insert(0, f"a{i} ")
            await b.append(f" b{i}")
        # Seen by the other provider means relayed, and relayed means stored.
        relayed = await same_everywhere(a, b)
        assert all(relayed.count(f"a{i} ") == relayed.count(f" b{i}") == 1 for i in range(5))

        await server.kill()
        await a.wait_event("$disconnect")
        await b.wait_event("$disconnect")
        # The database the killed process left behind holds every relayed edit.
        assert await stored_text(server.env["DATABASE_URL"], doc_id) == relayed
        await a.append(" [a offline]")  # the providers keep editing while it is down
        await b.append(" [b offline]")
        await server.start()  # the same port and database

        fresh = DocumentClient(server.base, ann.access_token, doc_id)
        try:
            await fresh.connect()
            await asyncio.wait_for(fresh.synced.wait(), WAIT)
            assert fresh.text.startswith(relayed), (fresh.text, relayed)

            # The providers reconnect by themselves and merge what they did offline.
            for provider in (a, b):
                await provider.wait_event("$connect", count=2, within=WAIT)
                await provider.wait_synced()
            merged = await same_everywhere(a, b, fresh)
            assert merged.startswith(relayed)
            assert merged.count(" [a offline]") == merged.count(" [b offline]") == 1
            assert len(merged) == len(relayed) + len(" [a offline]") + len(" [b offline]")

            await a.insert(0, "after: ")
            await b.append(" end")
            await converged("after: " + merged + " end", a, b, fresh)
            body = await api.call("GET", f"/api/v1/documents/{doc_id}/content", user=ann)
            assert body == {"text": "after: " + merged + " end"}
            assert await a.errors() == [] and await b.errors() == [] and fresh.errors == []
        finally:
            await fresh.close()
