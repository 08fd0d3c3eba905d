"""The process as an operator runs it: `python -m app`, migrate, create-user, SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import socketio

from app.auth.tokens import DEV_SECRET_FILE
from app.server import tune_gc
from tests.conftest import TEST_JWT_SECRET, make_settings, sqlite_url
from tests.helpers import PASSWORD, eventually

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def app_env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key.isupper()}
    for key in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "ENV", "PORT", "HOST"):
        env.pop(key, None)
    env.update(DATA_DIR=str(tmp_path / "data"), PORT=str(free_port()), LOG_LEVEL="INFO")
    return env


def run_app(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=env,
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
async def start_server(app_env: dict[str, str]) -> AsyncIterator[Callable[..., object]]:
    """Start `python -m app` as a child process; always ended by its own PID."""
    started: list[asyncio.subprocess.Process] = []

    async def start(**extra_env: str) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app",
            env={**app_env, **extra_env},
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


# Where Linux lists the sockets (elsewhere a server's port is not checked for its owner).
PROC_NET_TCP = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def listening_port_of(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the socket listening on ``port`` (Linux: /proc)."""
    inodes = set()
    for table in (table for table in PROC_NET_TCP if table.exists()):
        with table.open() as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(f"socket:[{fields[9]}]")
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # gone, or not ours to read
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in inodes:
                return True
        except OSError:  # closed meanwhile (the listing's own, for one)
            continue
    return False


async def wait_until_up(base: str, pid: int | None = None) -> None:
    """Until ``base`` answers /health; with ``pid``, answered by that process: a port
    picked by ``free_port`` can be picked by a test running beside this one too, whose
    server then answers for a moment (and is gone when this test calls)."""

    async def up() -> None:
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{base}/health") as response:
                assert response.status == 200
        except aiohttp.ClientConnectionError as exc:
            raise AssertionError("not up yet") from exc
        if pid is not None and PROC_NET_TCP[0].exists():
            port = int(base.rsplit(":", 1)[1])
            assert listening_port_of(pid, port), f"another process answers on port {port}"

    # A start-up imports anthropic, qdrant-client and numpy: ~3 s alone, but several
    # nodes starting at once on a busy 2-core machine have taken over 30 s.
    await eventually(up, timeout=90, interval=0.1)


@pytest.mark.skipif(not PROC_NET_TCP[0].exists(), reason="reads Linux's /proc/net/tcp")
def test_the_readiness_check_knows_which_process_listens() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = int(listener.getsockname()[1])
        assert not listening_port_of(os.getpid(), port)  # bound, not listening yet
        listener.listen()
        assert listening_port_of(os.getpid(), port)
        assert not listening_port_of(os.getppid(), port)


def test_the_server_tunes_the_gc_once_started(tmp_path: Path) -> None:
    before = gc.get_threshold()
    try:
        tune_gc(make_settings(sqlite_url(tmp_path / "db"), tmp_path, gc_young_threshold=12_345))
        assert gc.get_threshold() == (12_345, *before[1:])
        assert gc.get_freeze_count() > 0  # GC_FREEZE (on by default)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_serving_an_unmigrated_database_is_refused(app_env: dict[str, str]) -> None:
    result = run_app(app_env)
    assert result.returncode == 1
    assert "run `python -m app migrate`" in result.stderr


def test_production_refuses_missing_or_placeholder_secrets(app_env: dict[str, str]) -> None:
    api_key = "sk-ant-api03-" + "s3cr3t" * 8
    for secret in (None, "changeme", "short"):
        env = {**app_env, "ENV": "production", "ANTHROPIC_API_KEY": api_key}
        if secret is not None:
            env["JWT_SECRET"] = secret
        result = run_app(env)
        assert result.returncode == 2, result.stderr
        assert "set JWT_SECRET" in result.stderr
        # pydantic's own message quotes the settings it was given: no part of a secret.
        assert "s3cr3t" not in result.stderr and "changeme" not in result.stderr
        assert "input_value" not in result.stderr


def test_a_bad_setting_is_named_without_its_value(app_env: dict[str, str]) -> None:
    result = run_app({**app_env, "PORT": "eighty-eighty"})
    assert result.returncode == 2
    assert "PORT: Input should be a valid integer" in result.stderr
    assert "eighty-eighty" not in result.stderr


def test_migrate_then_create_user(app_env: dict[str, str]) -> None:
    assert run_app(app_env, "migrate").returncode == 0
    again = run_app(app_env, "migrate")  # idempotent
    assert again.returncode == 0, again.stderr
    created = run_app(
        app_env, "create-user", "Admin", "--role", "admin", "--password-stdin", stdin=PASSWORD
    )
    assert created.returncode == 0, created.stderr
    assert "created admin admin" in created.stdout
    duplicate = run_app(app_env, "create-user", "admin", "--password-stdin", stdin=PASSWORD)
    assert duplicate.returncode == 1
    assert "username_taken" in duplicate.stderr
    weak = run_app(app_env, "create-user", "bob", "--password-stdin", stdin="shrt1")
    assert weak.returncode == 2
    assert "PASSWORD" in weak.stderr and "shrt1" not in weak.stderr  # no password printed


async def test_serve_then_sigterm_drains_and_exits_cleanly(
    app_env: dict[str, str], start_server: Callable[..., object]
) -> None:
    """/ready turns 503 during the grace period, sockets are closed, exit code 0."""
    assert run_app(app_env, "migrate").returncode == 0
    process = await start_server(SHUTDOWN_GRACE_SECONDS="1", LOG_FORMAT="json")  # type: ignore[misc]
    assert isinstance(process, asyncio.subprocess.Process)
    base = f"http://127.0.0.1:{app_env['PORT']}"
    await wait_until_up(base, process.pid)

    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/api/v1/auth/register", json={"username": "ann", "password": PASSWORD}
        ) as response:
            assert response.status == 201
        async with http.post(
            f"{base}/api/v1/auth/login", json={"username": "ann", "password": PASSWORD}
        ) as response:
            token = (await response.json())["access_token"]

        sio = socketio.AsyncClient(reconnection=False)
        disconnected = asyncio.Event()
        sio.on("disconnect", lambda *_: disconnected.set())
        await sio.connect(base, auth={"token": token}, transports=["websocket"])
        try:
            process.send_signal(signal.SIGTERM)

            async def draining() -> None:
                async with http.get(f"{base}/ready") as response:
                    assert response.status == 503
                    assert (await response.json())["status"] == "draining"

            await eventually(draining, timeout=5)
            await asyncio.wait_for(disconnected.wait(), timeout=15)
        finally:
            await sio.disconnect()
    assert await asyncio.wait_for(process.wait(), timeout=20) == 0
    assert process.stdout is not None
    lines = [json.loads(line) for line in (await process.stdout.read()).decode().splitlines()]
    assert any(line["message"] == "stopped" for line in lines)
    access = [line for line in lines if line["name"] == "app.access"]
    assert access and all(len(line["correlation_id"]) == 32 for line in access)


async def test_sigterm_with_no_connection_exits_without_a_traceback(
    app_env: dict[str, str], start_server: Callable[..., object]
) -> None:
    """Issue 11, finding 16: shutdown waited on an empty set of connections."""
    assert run_app(app_env, "migrate").returncode == 0
    process = await start_server(SHUTDOWN_GRACE_SECONDS="0")  # type: ignore[misc]
    assert isinstance(process, asyncio.subprocess.Process)
    await wait_until_up(f"http://127.0.0.1:{app_env['PORT']}", process.pid)
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), timeout=20) == 0
    assert process.stdout is not None
    output = (await process.stdout.read()).decode()
    assert "stopped" in output and "Traceback" not in output, output


async def test_development_secret_is_generated_once_and_kept(
    app_env: dict[str, str], start_server: Callable[..., object]
) -> None:
    """Tokens survive a restart in development because the secret lives in DATA_DIR."""
    assert run_app(app_env, "migrate").returncode == 0
    secret_file = Path(app_env["DATA_DIR"]) / DEV_SECRET_FILE
    base = f"http://127.0.0.1:{app_env['PORT']}"
    tokens = []
    for _ in range(2):
        process = await start_server()  # type: ignore[misc]
        assert isinstance(process, asyncio.subprocess.Process)
        await wait_until_up(base, process.pid)
        async with aiohttp.ClientSession() as http:
            if not tokens:
                credentials = {"username": "bob", "password": PASSWORD}
                async with http.post(f"{base}/api/v1/auth/register", json=credentials) as response:
                    assert response.status == 201
                async with http.post(f"{base}/api/v1/auth/login", json=credentials) as response:
                    tokens.append((await response.json())["access_token"])
            headers = {"Authorization": f"Bearer {tokens[0]}"}
            async with http.get(f"{base}/api/v1/auth/me", headers=headers) as response:
                assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert secret_file.read_text() != TEST_JWT_SECRET


async def test_sigterm_does_not_wait_forever_for_a_silent_polling_client(
    app_env: dict[str, str], start_server: Callable[..., object]
) -> None:
    """A long-polling client that never polls again cannot hold shutdown hostage."""
    assert run_app(app_env, "migrate").returncode == 0
    process = await start_server(SHUTDOWN_TIMEOUT_SECONDS="1")  # type: ignore[misc]
    assert isinstance(process, asyncio.subprocess.Process)
    base = f"http://127.0.0.1:{app_env['PORT']}"
    await wait_until_up(base, process.pid)
    async with aiohttp.ClientSession() as http:
        credentials = {"username": "pat", "password": PASSWORD}
        async with http.post(f"{base}/api/v1/auth/register", json=credentials) as response:
            assert response.status == 201
        async with http.post(f"{base}/api/v1/auth/login", json=credentials) as response:
            token = (await response.json())["access_token"]
        # Engine.IO handshake over polling, then the Socket.IO CONNECT packet...
        async with http.get(f"{base}/socket.io/?EIO=4&transport=polling") as response:
            handshake = json.loads((await response.text())[1:])
        session = f"{base}/socket.io/?EIO=4&transport=polling&sid={handshake['sid']}"
        connect_packet = "40" + json.dumps({"token": token})
        async with http.post(session, data=connect_packet) as response:
            assert response.status == 200
        async with http.get(session) as response:  # the CONNECT ack
            assert (await response.text()).startswith("40")
        # ...and then silence: no more polls.
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0
