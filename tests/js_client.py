"""Drive the official JavaScript ``socket.io-client`` (``tests/js/room_client.mjs``).

Each ``JsClient`` is one Node process holding one Socket.IO connection. The test
sends it one JSON command per line and reads one JSON reply per line; see the
header of ``room_client.mjs`` for the commands. ``NodeProgram`` is that driving,
shared with ``tests/yjs_js.py`` (the y-socket.io provider).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, NoReturn, Self

import pytest

from tests.conftest import REQUIRE_SERVICES

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "room_client.mjs"
INSTALL_TIMEOUT = 300.0
REPLY_GRACE = 5.0  # seconds a reply may take beyond the command's own timeout
EXIT_TIMEOUT = 5.0
LIFETIME_MS = 120_000  # the Node process ends itself after this, whatever happens
REQUIRED_PACKAGES = ("socket.io-client", "y-socket.io", "yjs")
WEBSOCKET = ["websocket"]
POLLING_THEN_UPGRADE = ["polling", "websocket"]  # the client's default


class JsError(Exception):
    """The Node program answered a command with ``{"ok": false, "error": ...}``."""


def _missing(reason: str) -> NoReturn:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} and REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(reason)


def node_with_modules() -> str:
    """The ``node`` executable, with ``tests/js/node_modules`` installed (``npm ci``)."""
    executable = shutil.which("node")
    if executable is None:
        _missing("node is not on PATH (the JavaScript client tests need Node 18+)")
    modules = JS_DIR / "node_modules"
    if not all((modules / package).is_dir() for package in REQUIRED_PACKAGES):
        npm = shutil.which("npm")
        if npm is None:
            _missing("npm is not on PATH (needed once, for npm ci in tests/js)")
        try:
            done = subprocess.run(
                # --ignore-scripts: y-socket.io depends on leveldown (its server's
                # storage), whose native build the client does not need.
                [npm, "ci", "--prefix", str(JS_DIR), "--no-audit", "--no-fund", "--ignore-scripts"],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            _missing(f"npm ci in tests/js took more than {INSTALL_TIMEOUT:.0f} s")
        if done.returncode != 0:
            _missing(f"npm ci in tests/js failed ({done.returncode}): {done.stderr[-2000:]}")
    return executable


class NodeProgram:
    """One Node process running ``script``, driven by JSON lines."""

    script: Path

    def __init__(
        self, process: asyncio.subprocess.Process, name: str, url: str, stderr: Path
    ) -> None:
        self.process = process
        self.name = name
        self.url = url
        self.stderr = stderr
        self._ids = itertools.count(1)

    @classmethod
    async def start(cls, node: str, name: str, url: str, stderr: Path) -> Self:
        """Start the Node program (not connected yet); ``stderr`` is where its log goes."""
        with stderr.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                node,
                str(cls.script),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=JS_DIR,
                env={**os.environ, "JS_CLIENT_LIFETIME_MS": str(LIFETIME_MS)},
                limit=2**22,
            )
        return cls(process, name, url, stderr)

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one command; its reply (raises ``JsError`` for a failed command)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        command = {"id": next(self._ids), "op": op, **args}
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()
        timeout = args.get("timeout_ms", 5000) / 1000 + REPLY_GRACE
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.name}: no reply to {command} in {timeout} s") from None
        if not line:
            await self.process.wait()
            raise AssertionError(
                f"{self.name} exited ({self.process.returncode}) during {command}: "
                + self.stderr.read_text(errors="replace")[-2000:]
            )
        reply: dict[str, Any] = json.loads(line)
        assert reply.get("id") == command["id"], (command, reply)
        if not reply.pop("ok"):
            raise JsError(f"{self.name}: {op} failed: {reply['error']}")
        del reply["id"]
        return reply

    async def wait_event(self, event: str, count: int = 1, *, within: float = 5.0) -> list[Any]:
        """Every payload of ``event`` received so far, once there are ``count``."""
        reply = await self.call("wait_event", event=event, count=count, timeout_ms=within * 1000)
        events: list[Any] = reply["events"]
        return events

    async def events(self, name: str | None = None) -> list[Any]:
        """All received ``[event, payload]`` pairs in order, or the payloads of ``name``."""
        pairs: list[list[Any]] = (await self.call("events"))["events"]
        if name is None:
            return pairs
        return [payload for event, payload in pairs if event == name]

    async def pause(self) -> None:
        """Stop reading the websocket (TCP level), as a frozen tab does."""
        assert (await self.call("pause"))["paused"], f"{self.name}: not on a websocket"

    async def resume(self) -> None:
        assert (await self.call("resume"))["resumed"], f"{self.name}: not on a websocket"

    async def close(self) -> None:
        """Ask the process to exit; end it by its PID if it does not."""
        process = self.process
        if process.returncode is None and process.stdin is not None:
            with contextlib.suppress(ConnectionError):
                process.stdin.write(b'{"id": 0, "op": "exit"}\n')
                await process.stdin.drain()
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), EXIT_TIMEOUT)
        except TimeoutError:
            process.kill()  # this process only, by its PID
            await process.wait()


class JsClient(NodeProgram):
    script = SCRIPT

    async def connect(
        self, token: str | None, transports: list[str] | None = None
    ) -> dict[str, Any]:
        """``{"connected": true, "sid"}`` or ``{"connected": false,
        "connect_error": {"message", "data"}}``; ``token=None`` sends no ``auth``."""
        args: dict[str, Any] = {"url": self.url, "transports": transports or WEBSOCKET}
        if token is not None:
            args["token"] = token
        return await self.call("connect", **args)

    async def emit(self, event: str, payload: Any, *, within: float = 5.0) -> Any:
        """Emit with an acknowledgement; the ack's argument."""
        return (await self.call("emit", event=event, payload=payload, timeout_ms=within * 1000))[
            "ack"
        ]

    async def emit_no_ack(self, event: str, payload: Any) -> None:
        await self.call("emit", event=event, payload=payload, ack=False)

    async def command(self, event: str, payload: dict[str, Any]) -> Any:
        """Emit with an ack that must be ``{"ok": true, "data": ...}``; the data."""
        ack = await self.emit(event, payload)
        assert isinstance(ack, dict) and ack.get("ok") is True, (event, ack)
        return ack["data"]

    async def wait_connect(self, *, within: float = 10.0) -> dict[str, Any]:
        return await self.call("wait_connect", timeout_ms=within * 1000)

    async def wait_upgrade(self, *, within: float = 10.0) -> str:
        transport: str = (await self.call("wait_upgrade", timeout_ms=within * 1000))["transport"]
        return transport

    async def disconnect(self) -> None:
        await self.call("disconnect")

    async def close_transport(self) -> None:
        await self.call("close_transport")
