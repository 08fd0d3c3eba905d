"""The web page end to end: Debian's Chromium driven by Playwright (its executablePath,
no browser download) against a real ``python -m app`` process serving the shipped
build, with the assistant pointed at the local Messages-API stand-in.

Each step saves a screenshot under ``WEBUI_SCREENSHOTS`` (a folder) or, unset, under
pytest's temporary folder (``webui-screenshots*``); none is committed. One server,
one browser for the module; each test makes its own users and document; the restart
test comes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from roomclient import RoomClient
from tests.conftest import REQUIRE_SERVICES, TEST_JWT_SECRET, UNLIMITED_RATES
from tests.fake_anthropic import FakeAnthropic, Plan
from tests.helpers import PASSWORD, eventually
from tests.test_cli import free_port
from tests.test_yjs_js import Server

playwright_api = pytest.importorskip("playwright.async_api")
Browser = playwright_api.Browser
BrowserContext = playwright_api.BrowserContext
Page = playwright_api.Page
expect = playwright_api.expect

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# As this machine's notes start it: no sandbox as root, and no background networking
# (this machine's closed network refuses those connections).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000  # any one thing the page must show, at most this long
expect.set_options(timeout=WAIT_MS)
WEB = Path(__file__).resolve().parent.parent / "web"
AXE = WEB / "node_modules" / "axe-core" / "axe.min.js"  # web/package-lock.json's axe-core


def _missing(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} and REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("WEBUI_SCREENSHOTS")
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("webui-screenshots")


async def shot(page: Any, shots: Path, name: str) -> None:
    await page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def claude() -> AsyncIterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()
    server = TestServer(fake.app, host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("")).rstrip("/")
    await server.close()


async def start_server(folder: Path, claude_url: str, **settings: str) -> Server:
    """``python -m app`` on SQLite, Claude at the stand-in, limits out of the way."""
    env = {key: value for key, value in os.environ.items() if key.isupper()}
    for key in ("REDIS_URL", "ENV", "LOG_FORMAT", "CORS_ORIGINS", "DATABASE_URL"):
        env.pop(key, None)
    env.update({name.upper(): str(value) for name, value in UNLIMITED_RATES.items()})
    env.update(
        DATABASE_URL=f"sqlite+aiosqlite:///{folder / 'server.sqlite3'}",
        DATA_DIR=str(folder / "data"),
        JWT_SECRET=TEST_JWT_SECRET,
        HOST="127.0.0.1",
        PORT=str(free_port()),
        LOG_LEVEL="INFO",
        ANTHROPIC_API_KEY="test-key",
        ANTHROPIC_BASE_URL=claude_url,
        AI_CHUNK_INTERVAL_SECONDS="0.05",
        DOCUMENT_INDEX_DEBOUNCE_SECONDS="0.2",  # the document's passages, soon searchable
        # One person per page of presence: a page here that joins where others are
        # lists all but the first of them (by user id) through presence:list.
        PRESENCE_PAGE_SIZE="1",
        **settings,
    )
    process = Server(env, folder / "server.log")
    assert await process.run("migrate") == 0, process.log.read_text()[-2000:]
    await process.start()
    return process


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(
    claude: tuple[FakeAnthropic, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    process = await start_server(tmp_path_factory.mktemp("webui-server"), claude[1])
    try:
        yield process
    finally:
        await process.stop()


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """The machine's Chromium, driven by playwright (missing: a skip, or a failure with
    REQUIRE_SERVICES)."""
    if shutil.which(CHROMIUM) is None:
        _missing(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    async with playwright_api.async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    async with chromium() as launched:
        yield launched


async def sign_in(context: Any, tokens: dict[str, Any]) -> None:
    """The context's pages open signed in with ``tokens`` (a login's answer), unless a
    page signed out or in since."""
    # The page keeps its session in localStorage under this key (web/src/api.ts).
    session = json.dumps(json.dumps(tokens))
    await context.add_init_script(
        f"if (!localStorage.getItem('roomserver.session'))"
        f" localStorage.setItem('roomserver.session', {session});"
    )


@pytest.fixture(scope="module")
def axe() -> Path:
    """axe-core's built script, installed in web/ from its lock file when missing."""
    if not AXE.is_file():
        npm = shutil.which("npm")
        if npm is None:
            _missing("npm is not on PATH (needed once, for npm ci in web/: axe-core)")
        done = subprocess.run(
            [npm, "ci", "--prefix", str(WEB), "--no-audit", "--no-fund", "--ignore-scripts"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0 or not AXE.is_file():
            _missing(f"npm ci in web/ failed ({done.returncode}): {done.stderr[-2000:]}")
    return AXE


class Person:
    """A user with a browser context of their own (signed in by the page's storage)."""

    def __init__(self, username: str, user: dict[str, Any], tokens: dict[str, Any]) -> None:
        self.username = username
        self.id = str(user["id"])
        self.tokens = tokens
        self.page: Any = None
        self.context: Any = None
        self.console: list[str] = []

    @property
    def token(self) -> str:
        return str(self.tokens["access_token"])


class Site:
    def __init__(self, server: Server, browser: Any, shots: Path) -> None:
        self.server = server
        self.browser = browser
        self.shots = shots
        self.contexts: list[Any] = []
        self.people: list[Person] = []

    async def rest(self, method: str, path: str, token: str | None = None, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.server.base + path, json=body, headers=headers) as response,
        ):
            assert response.status < 300, (method, path, response.status, await response.text())
            return None if response.status == 204 else await response.json()

    async def person(
        self,
        prefix: str,
        *,
        signed_in: bool = True,
        width: int = 1280,
        height: int = 900,
        bypass_csp: bool = False,
    ) -> Person:
        username = f"{prefix}{uuid.uuid4().hex[:6]}"
        credentials = {"username": username, "password": PASSWORD}
        user = await self.rest("POST", "/api/v1/auth/register", body=credentials)
        tokens = await self.rest("POST", "/api/v1/auth/login", body=credentials)
        person = Person(username, user, tokens)
        context = await self.browser.new_context(
            viewport={"width": width, "height": height}, bypass_csp=bypass_csp
        )
        self.contexts.append(context)
        if signed_in:
            await sign_in(context, tokens)
        person.context = context
        person.page = await context.new_page()
        person.page.set_default_timeout(WAIT_MS)
        person.page.on("console", lambda message: person.console.append(message.text))
        self.people.append(person)
        return person

    async def document(self, owner: Person, title: str, **members: str) -> str:
        doc = await self.rest("POST", "/api/v1/documents", owner.token, {"title": title})
        for person_id, role in members.items():
            await self.rest(
                "PUT",
                f"/api/v1/documents/{doc['id']}/members/{person_id}",
                owner.token,
                {"role": role},
            )
        return str(doc["id"])

    async def open(self, person: Person, document_id: str) -> Any:
        page = person.page
        await page.goto(f"{self.server.base}/#/d/{document_id}")
        await expect(page.locator(".cm-content")).to_be_visible()
        await expect(
            page.locator(".people li", has_text=f"{person.username} (you)")
        ).to_be_visible()
        return page

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()
        refused = [line for p in self.people for line in p.console if "Content Security" in line]
        assert refused == [], refused  # the page needs nothing its policy refuses


@pytest_asyncio.fixture(loop_scope="module")
async def site(server: Server, browser: Any, shots: Path) -> AsyncIterator[Site]:
    opened = Site(server, browser, shots)
    yield opened
    await opened.close()


async def type_in_editor(page: Any, text: str) -> None:
    await page.locator(".cm-content").click()
    await page.keyboard.press("Control+End")
    await page.keyboard.type(text)


# The editor's text as the person reads it: without the remote carets' name labels.
TEXT_SCRIPT = """content => {
  const copy = content.cloneNode(true);
  copy.querySelectorAll(".cm-ySelectionCaret, .cm-widgetBuffer").forEach(n => n.remove());
  return [...copy.querySelectorAll(".cm-line")].map(line => line.textContent).join("\\n");
}"""


async def editor_text(page: Any) -> str:
    return str(await page.locator(".cm-content").evaluate(TEXT_SCRIPT))


async def until(check: Callable[[], Awaitable[None]], *, within: float) -> None:
    """Retry ``check`` until it passes, at most ``within`` seconds."""
    await eventually(check, timeout=within)  # type: ignore[arg-type]


async def shows(page: Any, expected: str, *, whole: bool = True) -> None:
    """The editor shows ``expected`` (as the whole text, or within it) within WAIT_MS."""
    deadline = asyncio.get_running_loop().time() + WAIT_MS / 1000
    while True:
        text = await editor_text(page)
        if text == expected if whole else expected in text:
            return
        assert asyncio.get_running_loop().time() < deadline, (text, expected)
        await asyncio.sleep(0.05)


# --- the tests ---------------------------------------------------------------------------


async def test_two_people_edit_one_document_and_see_each_others_text_and_cursors(
    site: Site,
) -> None:
    ann = await site.person("ann", signed_in=False)
    ben = await site.person("ben")
    page = ann.page
    await page.goto(site.server.base + "/")
    await shot(page, site.shots, "01-sign-in")
    await page.get_by_label("Username").fill(ann.username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_text(f"Signed in as {ann.username}")).to_be_visible()
    await page.get_by_label("New document title").fill("Launch plan")
    await page.get_by_role("button", name="Create").click()
    await expect(page.locator(".cm-content")).to_be_visible()
    match = re.search(r"#/d/([0-9a-f-]{36})$", page.url)
    assert match is not None, page.url
    document_id = match[1]
    # The owner adds ben by his username, as an editor (a name nobody has is refused).
    await page.get_by_label("Username").fill("nobody-" + ben.username)
    await page.get_by_role("button", name="Add member").click()
    await expect(page.locator(".members .error")).to_have_text(
        f"no user is named nobody-{ben.username}"
    )
    await page.get_by_label("Username").fill(ben.username)
    await page.get_by_label("Role", exact=True).select_option("editor")
    await page.get_by_role("button", name="Add member").click()
    await expect(page.get_by_label(f"Role of {ben.username}")).to_have_value("editor")
    await expect(page.locator(".members [role=status]")).to_have_text(
        f"{ben.username} is now an editor."
    )
    await expect(page.locator(".members .error")).to_be_empty()

    await type_in_editor(page, "Ann writes the plan.")
    # Ben finds it in his documents and opens it.
    other = ben.page
    await other.goto(site.server.base + "/")
    await other.get_by_role("link", name="Launch plan").click()
    await expect(other.locator(".people li", has_text=f"{ben.username} (you)")).to_be_visible()
    assert other.url.endswith(f"#/d/{document_id}"), other.url
    await shows(other, whole=False, expected="Ann writes the plan.")
    await type_in_editor(other, " Ben adds a line.")
    await shows(page, whole=False, expected="Ann writes the plan. Ben adds a line.")
    await type_in_editor(page, " And ann answers.")
    for one in (page, other):
        await shows(one, "Ann writes the plan. Ben adds a line. And ann answers.")
    # Each sees the other's caret with their name, in their colour, and who is here.
    await expect(page.locator(".cm-ySelectionInfo", has_text=ben.username)).to_be_visible()
    await expect(other.locator(".cm-ySelectionInfo", has_text=ann.username)).to_be_visible()
    await expect(page.locator(".people li", has_text=ben.username)).to_be_visible()
    await expect(other.locator(".people li", has_text=ann.username)).to_be_visible()
    # Who is typing (in the chat box).
    await other.get_by_label("Your message").fill("thinking")
    await expect(page.locator(".typing")).to_have_text(f"{ben.username} is typing…")
    await shot(page, site.shots, "02-ann-sees-ben-editing")
    await shot(other, site.shots, "02-ben-sees-ann-editing")
    stored = await site.rest("GET", f"/api/v1/documents/{document_id}/content", ann.token)
    assert stored["text"] == "Ann writes the plan. Ben adds a line. And ann answers."

    # Presence is per user: ann's second tab is counted, not a second ann.
    second = await ann.context.new_page()
    await second.goto(f"{site.server.base}/#/d/{document_id}")
    await expect(other.locator(".people li", has_text=ann.username)).to_contain_text("2 tabs")
    await expect(other.locator(".people li")).to_have_count(2)
    await second.close()
    await expect(other.locator(".people li", has_text=ann.username)).not_to_contain_text("tabs")


async def test_chat_both_ways_with_history_older_pages_edits_and_deletions(site: Site) -> None:
    ann, ben = await site.person("ann"), await site.person("ben")
    document_id = await site.document(ann, "Chatty", **{ben.id: "editor"})
    async with RoomClient(site.server.base, ann.token) as client:  # history to page back through
        await client.join(document_id)
        for i in range(1, 61):
            await client.send(document_id, f"earlier {i}")
    page, other = await site.open(ann, document_id), await site.open(ben, document_id)
    await expect(page.locator(".message", has_text="earlier 60")).to_be_visible()
    # The newest page (50) first; scrolled to the top, the older ones.
    await expect(
        page.locator(".message .text", has_text=re.compile(r"^earlier 10$"))
    ).to_have_count(0)
    await page.locator(".messages").evaluate("list => { list.scrollTop = 0; }")
    await expect(page.locator(".message .text", has_text=re.compile(r"^earlier 1$"))).to_have_count(
        1
    )

    await page.get_by_label("Your message").fill("hello ben")
    await page.get_by_label("Your message").press("Enter")
    await expect(other.locator(".message", has_text="hello ben")).to_be_visible()
    await other.get_by_label("Your message").fill("hi ann")
    await other.get_by_role("button", name="Send").click()
    await expect(page.locator(".message", has_text="hi ann")).to_be_visible()

    # A message arriving leaves the others' items, their buttons and an edit begun, as
    # they are (a button drawn anew under the pointer loses the click).
    mine = other.locator(".message", has_text="hi ann")
    edit = await mine.get_by_role("button", name=re.compile("^Edit message")).element_handle()
    await page.get_by_label("Your message").fill("are you there?")
    await page.get_by_label("Your message").press("Enter")
    await expect(other.locator(".message", has_text="are you there?")).to_be_visible()
    assert await edit.evaluate("button => button.isConnected")
    await edit.click()
    box = await other.get_by_label("Edit message").element_handle()
    await box.fill("hi ann, edited")
    await page.get_by_label("Your message").fill("still there?")
    await page.get_by_label("Your message").press("Enter")
    await expect(other.locator(".message", has_text="still there?")).to_be_visible()
    assert await box.evaluate("box => box.isConnected && box.value") == "hi ann, edited"
    await other.get_by_role("button", name="Save").click()
    await expect(page.locator(".message", has_text="hi ann, edited")).to_contain_text("(edited)")
    page.once("dialog", lambda dialog: dialog.accept())
    await (
        page.locator(".message", has_text="hello ben")
        .get_by_role("button", name=re.compile("^Delete message"))
        .click()
    )
    await expect(other.locator(".message", has_text="hello ben")).to_have_count(0)
    await expect(other.locator(".message .deleted")).to_have_count(1)
    await shot(other, site.shots, "03-chat")

    await page.reload()
    await expect(page.locator(".message", has_text="hi ann, edited")).to_be_visible()
    await expect(page.locator(".message .deleted")).to_have_count(1)
    texts = await page.locator(".message .text").all_inner_texts()
    assert texts[-4:] == ["message deleted", "hi ann, edited", "are you there?", "still there?"], (
        texts[-5:]
    )
    await shot(page, site.shots, "04-chat-after-reload")


async def test_the_assistant_streams_into_both_pages_and_cancel_stops_it(
    site: Site, claude: tuple[FakeAnthropic, str]
) -> None:
    fake, _ = claude
    ann, ben = await site.person("ann"), await site.person("ben")
    document_id = await site.document(ann, "Ask me", **{ben.id: "editor"})
    page, other = await site.open(ann, document_id), await site.open(ben, document_id)
    await type_in_editor(page, "The launch is on the 12th of March in Lisbon.")

    async def indexed() -> None:  # the document's text is found by search (its citations)
        found = await site.rest("GET", "/api/v1/search?q=launch%20Lisbon", ann.token)
        # The whole sentence: a pause while typing longer than the index's debounce
        # indexes what was typed so far, which a search for "launch" finds too.
        assert any(
            item["id"] == document_id and "12th of March in Lisbon" in item["passage"]
            for item in found["items"]
        ), found

    await until(indexed, within=30)
    words = [f"word{i} " for i in range(40)]
    fake.plan(
        Plan(tokens=words, delay=0.05, input_tokens=321),
        Plan(tokens=["tick "] * 600, delay=0.05),
    )
    await page.get_by_label("Ask the assistant").fill("What is the plan?")
    await page.get_by_role("button", name="Ask").click()
    for one in (page, other):  # streaming: part of the answer shown before its end
        streaming = one.locator(".reply[data-status=streaming] .answer")
        await expect(streaming).to_contain_text("word3")
    await shot(other, site.shots, "05-assistant-streaming")
    for one in (page, other):
        done = one.locator(".reply[data-status=completed]")
        await expect(done.locator(".answer")).to_have_text("".join(words).strip())
        await expect(done.locator(".usage")).to_have_text("completed · 321 tokens in, 40 out")
        await expect(done.get_by_text("What is the plan?")).to_be_visible()
        # The passages that were in the prompt, as ai:done's citations.
        source = done.locator(".sources li", has_text="Ask me")
        await expect(source).to_contain_text("12th of March in Lisbon")
        await expect(source.get_by_role("link", name="Ask me")).to_have_attribute(
            "href", f"#/d/{document_id}"
        )

    await other.get_by_label("Ask the assistant").fill("Count for ever")
    await other.get_by_role("button", name="Ask").click()
    streaming = page.locator(".reply[data-status=streaming]")
    await expect(streaming.locator(".answer")).to_contain_text("tick tick tick")
    await streaming.get_by_role("button", name="Cancel").click()
    for one in (page, other):
        await expect(one.locator(".reply[data-status=cancelled] .usage")).to_contain_text(
            "cancelled"
        )
    await eventually(lambda: _truthy(fake.requests[-1].disconnected.is_set()), timeout=5)
    assert not fake.requests[-1].finished
    await shot(page, site.shots, "06-assistant-cancelled")

    # Reloaded, the panel shows the room's earlier answers again (from the chat
    # history, where each ended reply is stored), in the order they ended.
    await page.reload()
    replies = page.locator(".assistant .reply")
    await expect(replies).to_have_count(2)
    assert await replies.evaluate_all("items => items.map(i => i.dataset.status)") == [
        "completed",
        "cancelled",
    ]
    done = page.locator(".reply[data-status=completed]")
    await expect(done.locator(".answer")).to_have_text("".join(words).strip())
    await expect(done.locator(".usage")).to_have_text("completed · 321 tokens in, 40 out")
    await expect(done.locator(".question")).to_have_text(f"{ann.username} asked: What is the plan?")
    await expect(done.locator(".sources li", has_text="Ask me")).to_contain_text(
        "12th of March in Lisbon"
    )
    cancelled = page.locator(".reply[data-status=cancelled]")
    await expect(cancelled.locator(".answer")).to_contain_text("tick tick")
    await expect(cancelled.locator(".question")).to_have_text(
        f"{ben.username} asked: Count for ever"
    )
    await shot(page, site.shots, "06-assistant-after-reload")


async def test_a_reply_still_streaming_is_shown_after_a_reload(
    site: Site, claude: tuple[FakeAnthropic, str]
) -> None:
    fake, _ = claude
    ann = await site.person("ann")
    document_id = await site.document(ann, "Reload me")
    page = await site.open(ann, document_id)
    fake.plan(Plan(tokens=[f"n{i} " for i in range(600)], delay=0.05), Plan())
    await page.get_by_label("Ask the assistant").fill("Count slowly")
    await page.get_by_role("button", name="Ask").click()
    await expect(page.locator(".reply[data-status=streaming] .answer")).to_contain_text("n3 ")
    await page.reload()
    # The join ack's text so far, then the chunks after it, with no gap.
    streaming = page.locator(".reply[data-status=streaming]")
    await expect(streaming.locator(".answer")).to_contain_text("n0 n1 n2 n3 ")
    await expect(streaming.locator(".answer")).to_contain_text("n40 ")
    # The Cancel button stays the same element while chunks arrive: a button drawn
    # anew with each chunk loses a click whose press and release fall on two of them.
    cancel = await streaming.get_by_role("button", name="Cancel").element_handle()
    await expect(streaming.locator(".answer")).to_contain_text("n45 ")
    assert await cancel.evaluate("button => button.isConnected")
    await cancel.click()
    cancelled = page.locator(".reply[data-status=cancelled] .answer")
    await expect(cancelled).to_contain_text("n40 ")
    text = await cancelled.inner_text()
    numbers = [int(word[1:]) for word in text.split()]
    assert numbers == list(range(len(numbers))), text  # nothing lost, nothing twice


def _truthy(value: object) -> None:
    assert value


async def test_a_viewer_cannot_type_until_made_an_editor(site: Site) -> None:
    ann, cy = await site.person("ann"), await site.person("cy")
    document_id = await site.document(ann, "Read me", **{cy.id: "viewer"})
    page = await site.open(ann, document_id)
    await type_in_editor(page, "Only editors write here.")
    viewer = await site.open(cy, document_id)
    await shows(viewer, "Only editors write here.")
    await expect(viewer.locator("#read-only-note")).to_be_visible()
    await expect(viewer.locator(".cm-content")).to_have_attribute("contenteditable", "false")
    await viewer.locator(".cm-content").click()
    await viewer.keyboard.type("VIEWER WAS HERE")
    await expect(viewer.get_by_label("Your message")).to_be_disabled()
    await expect(viewer.get_by_label("Ask the assistant")).to_be_disabled()
    await shot(viewer, site.shots, "07-viewer")
    await shows(viewer, "Only editors write here.")
    await shows(page, "Only editors write here.")

    # The owner makes cy an editor: the open page may write at once.
    await page.get_by_label(f"Role of {cy.username}").select_option("editor")
    await expect(viewer.locator("#my-role")).to_have_text("editor")
    await type_in_editor(viewer, " Cy too, now.")
    await shows(page, "Only editors write here. Cy too, now.")


# Every control has a name a screen reader can say: a <label>, or aria-label.
UNLABELLED = """() => [...document.querySelectorAll("input, select, textarea, button")]
  .filter(el => !el.hidden && el.offsetParent !== null)
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute("aria-label")
                && !(el.tagName === "BUTTON" && el.textContent.trim()))
  .map(el => el.outerHTML)"""
OVERFLOW = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"


async def test_a_phone_sized_page_by_keyboard_alone_and_offline(site: Site) -> None:
    dee = await site.person("dee", signed_in=False, width=390, height=844)
    page = dee.page
    name = dee.username + "-p"  # a new account, made on the page
    await page.goto(site.server.base + "/")
    assert await page.evaluate(UNLABELLED) == []
    # Keyboard only: Tab from the top of the page to the form, Enter to register.
    for _ in range(3):  # the skip link, the home link, the username
        await page.keyboard.press("Tab")
    assert await page.evaluate("() => document.activeElement.name") == "username"
    await page.keyboard.type(name)
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Tab")  # past "Sign in" to "Create account"
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await expect(page.get_by_text(f"Signed in as {name}")).to_be_visible()
    await page.get_by_label("New document title").focus()
    await page.keyboard.type("On the train")
    await page.keyboard.press("Enter")
    await expect(page.locator(".cm-content")).to_be_visible()
    await expect(page.locator(".people li", has_text=f"{name} (you)")).to_be_visible()
    await page.locator(".cm-content").focus()
    await page.keyboard.type("Typed on a phone.")
    await page.keyboard.press("Escape")  # then Tab leaves the editor (CodeMirror)
    await page.keyboard.press("Tab")
    assert await page.evaluate("() => document.activeElement.className") != "cm-content"
    await page.get_by_label("Your message").focus()
    await page.keyboard.type("from the phone")
    await page.keyboard.press("Enter")
    await expect(page.locator(".message", has_text="from the phone")).to_be_visible()
    assert await page.evaluate(UNLABELLED) == []
    assert await page.evaluate(OVERFLOW) <= 0  # nothing wider than the phone
    await shot(page, site.shots, "08-phone")

    # The browser goes offline and comes back: the banner says so, then clears.
    await dee.context.set_offline(True)
    await expect(page.locator("#banner")).to_have_attribute("data-state", "offline")
    await expect(page.locator("#banner")).to_contain_text("You are offline")
    await shot(page, site.shots, "08-phone-offline")
    await dee.context.set_offline(False)
    await expect(page.locator("#banner")).to_be_hidden()
    await page.get_by_label("Your message").fill("back on the network")
    await page.get_by_label("Your message").press("Enter")
    await expect(
        page.locator(".message:not(.pending)", has_text="back on the network")
    ).to_be_visible()
    await shows(page, "Typed on a phone.")


# axe-core's rules for WCAG 2.0-2.2 A and AA (contrast, labels, names of buttons and links,
# ...) and its best practices (landmarks: everything inside one, one main, unique names).
AXE_RUN = """async () => {
  const results = await axe.run(document, {
    runOnly: {type: "tag", values: [
      "wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]},
  });
  return results.violations.map(v => ({
    rule: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map(n => [n.target.join(" "), n.failureSummary]),
  }));
}"""


async def audit(page: Any, axe: Path, where: str) -> None:
    """No axe-core violation on the page as it is now."""
    await page.add_script_tag(path=str(axe))
    violations = await page.evaluate(AXE_RUN)
    assert violations == [], (where, json.dumps(violations, indent=1))


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)], ids=["desktop", "phone"])
async def test_axe_finds_nothing_on_sign_in_documents_and_an_open_document(
    site: Site, axe: Path, claude: tuple[FakeAnthropic, str], width: int, height: int
) -> None:
    claude[0].plan(Plan())  # a short answer
    # The page's policy refuses inline scripts, which is how add_script_tag injects axe:
    # this context bypasses it (and so cannot check it; the other tests do).
    eve = await site.person("eve", signed_in=False, width=width, height=height, bypass_csp=True)
    ben = await site.person("ben")
    page = eve.page
    await page.goto(site.server.base + "/")
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    await audit(page, axe, f"sign in, {width}px")
    await page.get_by_label("Username").fill("nobody-" + eve.username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator(".signin .error")).not_to_be_empty()
    await audit(page, axe, f"sign in refused, {width}px")

    await page.get_by_label("Username").fill(eve.username)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_text(f"Signed in as {eve.username}")).to_be_visible()
    await audit(page, axe, f"no documents, {width}px")
    await site.document(eve, "Audited")
    await page.reload()
    await expect(page.get_by_role("link", name="Audited")).to_be_visible()
    await audit(page, axe, f"documents, {width}px")

    await page.get_by_label("New document title").fill("Audit me")
    await page.get_by_role("button", name="Create").click()
    await expect(page.locator(".people li", has_text=f"{eve.username} (you)")).to_be_visible()
    document_id = page.url.rsplit("/", 1)[1]
    await page.get_by_label("Username").fill(ben.username)
    await page.get_by_role("button", name="Add member").click()
    await expect(page.get_by_label(f"Role of {ben.username}")).to_be_visible()
    await site.open(ben, document_id)  # another person here, with a caret in the text
    await type_in_editor(ben.page, "Ben was here.")
    await shows(page, "Ben was here.")
    await type_in_editor(page, " Eve too.")
    await expect(page.locator(".cm-ySelectionInfo", has_text=ben.username)).to_be_visible()
    await page.get_by_label("Your message").fill("hello")
    await page.get_by_label("Your message").press("Enter")
    await expect(page.locator(".message:not(.pending)", has_text="hello")).to_be_visible()
    await page.get_by_label("Ask the assistant").fill("Anything?")
    await page.get_by_role("button", name="Ask").click()
    await expect(page.locator(".reply[data-status=completed]")).to_have_count(1)
    await audit(page, axe, f"an open document, {width}px")
    await shot(page, site.shots, f"13-audited-{width}")


# Records the banner's states from now on (window.bannerStates), in the page.
WATCH_BANNER = """() => {
  window.bannerStates = [];
  const banner = document.getElementById("banner");
  new MutationObserver(() => window.bannerStates.push(banner.dataset.state))
    .observe(banner, {attributes: true, attributeFilter: ["data-state"]});
}"""
STORED_SESSION = "() => JSON.parse(localStorage.getItem('roomserver.session'))"
ACCESS_TTL = 8  # seconds, for the next test: tokens that expire while it runs


async def test_tokens_are_renewed_over_the_socket_and_a_signed_out_session_is_shown(
    browser: Any, shots: Path, claude: tuple[FakeAnthropic, str], tmp_path: Path
) -> None:
    server = await start_server(
        tmp_path,
        claude[1],
        ACCESS_TOKEN_TTL_SECONDS=str(ACCESS_TTL),
        TOKEN_RENEW_GRACE_SECONDS="1",
    )
    site = Site(server, browser, shots)
    try:
        ann, ben = await site.person("ann"), await site.person("ben")
        document_id = await site.document(ann, "Long day", **{ben.id: "editor"})
        started = asyncio.get_running_loop().time()
        page, other = await site.open(ann, document_id), await site.open(ben, document_id)
        await page.evaluate(WATCH_BANNER)

        # auth:expiring -> POST /auth/refresh -> auth:refresh, on the same connection.
        async def renewed() -> None:
            stored = await page.evaluate(STORED_SESSION)
            assert stored["access_token"] != ann.token

        await until(renewed, within=ACCESS_TTL + 5)
        # Past the first token's expiry and grace: without renewal "/" would have been
        # ended; the document connection (which cannot renew) was, and came back.
        await asyncio.sleep(max(0.0, started + ACCESS_TTL + 3 - asyncio.get_running_loop().time()))
        await type_in_editor(page, "Still here after the token expired.")
        await shows(other, "Still here after the token expired.")
        await type_in_editor(other, " Both of us.")
        await shows(page, "Still here after the token expired. Both of us.")
        await page.get_by_label("Your message").fill("still talking")
        await page.get_by_label("Your message").press("Enter")
        await expect(other.locator(".message", has_text="still talking")).to_be_visible()
        assert await page.evaluate("() => window.bannerStates") == []  # "/" never dropped

        # Signed out elsewhere (the session the page holds): the page says so.
        stored = await page.evaluate(STORED_SESSION)
        await site.rest(
            "POST", "/api/v1/auth/logout", body={"refresh_token": stored["refresh_token"]}
        )
        await expect(page.locator("#banner")).to_have_attribute("data-state", "ended")
        await expect(page.locator("#banner")).to_contain_text("Your session ended")
        await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        await shot(page, shots, "09-session-ended")
        await expect(other.locator("#banner")).to_be_hidden()  # ben's session goes on
    finally:
        await site.close()
        await server.stop()


async def test_a_crowd_is_listed_page_by_page_and_the_rate_limit_waited_out(
    browser: Any,
    shots: Path,
    claude: tuple[FakeAnthropic, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """More people than one presence page, and fewer presence:list pages allowed at once
    than the page needs: it is told rate_limited, waits as told, and lists everyone."""
    server = await start_server(
        tmp_path_factory.mktemp("webui-crowd"),
        claude[1],
        RATE_HISTORY_BURST="1",  # presence:list's class
        RATE_HISTORY_PER_SECOND="4",
    )
    site = Site(server, browser, shots)
    try:
        ann = await site.person("ann")
        crowd = []
        for i in range(5):
            credentials = {"username": f"crowd{i}{uuid.uuid4().hex[:6]}", "password": PASSWORD}
            user = await site.rest("POST", "/api/v1/auth/register", body=credentials)
            tokens = await site.rest("POST", "/api/v1/auth/login", body=credentials)
            crowd.append((credentials["username"], str(user["id"]), tokens["access_token"]))
        document_id = await site.document(ann, "Crowd", **{id_: "editor" for _, id_, _ in crowd})
        async with contextlib.AsyncExitStack() as stack:
            for _, _, token in crowd:
                client = await stack.enter_async_context(RoomClient(server.base, token))
                await client.join(document_id)
            refusals: list[str] = []

            def watch(socket: Any) -> None:
                socket.on(
                    "framereceived",
                    lambda frame: refusals.append(frame) if "rate_limited" in str(frame) else None,
                )

            ann.page.on("websocket", watch)
            page = await site.open(ann, document_id)
            # One person per page (PRESENCE_PAGE_SIZE): five pages after the join's.
            for username, _, _ in crowd:
                await expect(page.locator(".people li", has_text=username)).to_be_visible()
            await expect(page.locator(".people li")).to_have_count(6)
            await shot(page, site.shots, "13-crowd-listed")
            assert refusals, "the page was never told rate_limited: nothing was waited out"
    finally:
        await site.close()
        await server.stop()


async def test_the_server_restarted_under_the_page_and_nothing_is_lost(site: Site) -> None:
    ann, ben = await site.person("ann"), await site.person("ben")
    document_id = await site.document(ann, "Survives", **{ben.id: "editor"})
    page, other = await site.open(ann, document_id), await site.open(ben, document_id)
    await type_in_editor(page, "Before the restart.")
    await page.get_by_label("Your message").fill("sent before")
    await page.get_by_label("Your message").press("Enter")
    await expect(other.locator(".message", has_text="sent before")).to_be_visible()
    await shows(other, "Before the restart.")

    await site.server.stop()
    for one in (page, other):
        await expect(one.locator("#banner")).to_have_attribute("data-state", "reconnecting")
    await shot(page, site.shots, "10-server-away")
    # While it is away: ann edits and sends; both wait on the page.
    await type_in_editor(page, " Written while away.")
    await page.get_by_label("Your message").fill("sent while away")
    await page.get_by_label("Your message").press("Enter")
    await expect(page.locator(".message.pending", has_text="sent while away")).to_be_visible()

    await site.server.start()
    # "back" shows for a few seconds once a page's socket is connected again.
    await expect(page.locator("#banner")).to_have_attribute("data-state", "back", timeout=30_000)
    await expect(other.locator("#banner")).to_have_attribute(
        "data-state", re.compile("^(back|online)$"), timeout=30_000
    )
    await shot(page, site.shots, "11-back")
    expected = "Before the restart. Written while away."
    await shows(other, expected)
    await expect(other.locator(".message", has_text="sent while away")).to_have_count(1)
    await expect(page.locator(".message.pending")).to_have_count(0)
    await type_in_editor(other, " And after.")
    await shows(page, expected + " And after.")

    await other.reload()
    await shows(other, expected + " And after.")
    # Waited for: the chat comes with the room's join, apart from the editor's text.
    await expect(other.locator(".message .text")).to_have_text(["sent before", "sent while away"])
    stored = await site.rest("GET", f"/api/v1/documents/{document_id}/content", ann.token)
    assert stored["text"] == expected + " And after."
    await shot(other, site.shots, "12-after-restart-reload")
