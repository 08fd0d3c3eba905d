"""The nodes' Redis reached over TLS, and through Redis Sentinel across a failover
(realtime/cluster/target.py): real ``redis-server`` processes of these tests' own (a TLS
one with a CA made here by ``openssl``; a master, its replica and a Sentinel) and real
``python -m app`` nodes, as in tests/test_cluster.py (whose fixtures these use).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from app.config import Settings
from realtime.cluster.target import RedisTarget
from roomclient import RoomClient
from tests.cluster_nodes import (
    WAIT,
    RedisProcess,
    StartNodes,
    api_of,
    chat_texts,
    metric,
    three_members,
)
from tests.conftest import service_missing
from tests.helpers import User, eventually
from tests.test_yjs_js import Server

pytestmark = pytest.mark.slow

Clients = Callable[[Server, User], Awaitable[RoomClient]]
FAILOVER = 30.0  # Sentinel's down-after (1 s) and election, and the nodes following


def test_sentinels_are_host_port_pairs() -> None:
    settings = Settings(redis_sentinels="127.0.0.1:26379, [::1]:26380,sentinel-3:5000")  # type: ignore[arg-type]
    assert settings.redis_sentinels == [
        ("127.0.0.1", 26379),
        ("::1", 26380),
        ("sentinel-3", 5000),
    ]
    for bad in ("127.0.0.1", "127.0.0.1:0", "host:port", ":26379", "a:1,,b:2"):
        with pytest.raises(ValidationError):
            Settings(redis_sentinels=bad)  # type: ignore[arg-type]


def test_with_sentinels_the_urls_host_names_the_master() -> None:
    with pytest.raises(ValueError, match="names the master"):
        RedisTarget("redis:///0", (("127.0.0.1", 26379),)).pool()


async def crosses(on_a: RoomClient, on_b: RoomClient, doc_id: str, text: str) -> None:
    await on_a.send(doc_id, text)
    await eventually(lambda: _has(on_b, text), timeout=WAIT)


def _has(client: RoomClient, text: str) -> None:
    assert text in chat_texts(client)


def _binary(name: str) -> None:
    if shutil.which(name) is None:
        service_missing(name, FileNotFoundError(name))


# --- TLS ------------------------------------------------------------------------------


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key = directory / "server.pem", directory / "server.key"
    request = directory / "server.csr"
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=test CA"],
        ["req", *ec, "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial"],
    ]
    commands[-1] += ["-out", cert, "-days", "1", "-extfile", extensions]
    for command in commands:
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return ca, cert, key


async def test_nodes_reach_redis_over_tls(
    tmp_path: Path,
    start_nodes: StartNodes,
    clients: Clients,
) -> None:
    _binary("openssl")
    _binary("redis-server")
    ca, cert, key = make_certificates(tmp_path)
    redis = RedisProcess(tmp_path)
    redis.options = (
        "--port", "0",  # no plain-text port: TLS only
        "--tls-port", str(redis.port),
        "--tls-cert-file", str(cert),
        "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    redis.url = f"rediss://127.0.0.1:{redis.port}/0?ssl_ca_certs={ca}"
    try:
        await redis.start()
        # Without the CA the server's certificate is refused: it really is TLS.
        plain = Redis.from_url(f"rediss://127.0.0.1:{redis.port}/0")
        with pytest.raises(Exception, match=r"(?i)certificate"):
            await plain.ping()
        await plain.aclose()

        a, b = await start_nodes(2, redis.url)
        async with api_of(a) as api:
            ann, ben, _, doc_id = await three_members(api)
        on_a, on_b = await clients(a, ann), await clients(b, ben)
        for client in (on_a, on_b):
            await client.join(doc_id)
        await crosses(on_a, on_b, doc_id, "over TLS")
        await crosses(on_b, on_a, doc_id, "and back")
        for node in (a, b):
            assert await metric(node, "cluster_link_up") == 1
    finally:
        await redis.stop()


# --- Sentinel -------------------------------------------------------------------------


async def test_nodes_follow_a_sentinel_failover_without_a_restart(
    tmp_path: Path,
    start_nodes: StartNodes,
    clients: Clients,
) -> None:
    _binary("redis-server")
    master = RedisProcess(tmp_path / "master")
    replica = RedisProcess(tmp_path / "replica")
    replica.options = ("--replicaof", "127.0.0.1", str(master.port))
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"sentinel monitor primary 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds primary 1000\n"
        "sentinel failover-timeout primary 5000\n"
    )
    sentinel = RedisProcess(tmp_path / "sentinel", "--sentinel", config=config)
    processes = (master, replica, sentinel)
    for process in processes:
        process.directory.mkdir()
    try:
        for process in processes:
            await process.start()

        async def sees_the_replica() -> None:
            client = Redis.from_url(sentinel.url)
            try:
                replicas = await client.sentinel_slaves("primary")
            finally:
                await client.aclose()
            assert [r["port"] for r in replicas] == [replica.port]

        await eventually(sees_the_replica, timeout=WAIT)
        # The URL's host is the master's name in the Sentinels' configuration.
        a, b = await start_nodes(
            2, "redis://primary/0", REDIS_SENTINELS=f"127.0.0.1:{sentinel.port}"
        )
        async with api_of(a) as api:
            ann, ben, _, doc_id = await three_members(api)
        on_a, on_b = await clients(a, ann), await clients(b, ben)
        for client in (on_a, on_b):
            await client.join(doc_id)
        await crosses(on_a, on_b, doc_id, "through the first master")

        await master.stop()  # Sentinel promotes the replica; the nodes follow it
        sent = 0

        async def through_the_new_master() -> None:
            nonlocal sent
            sent += 1
            text = f"after the failover {sent}"
            await on_b.send(doc_id, text)
            await asyncio.sleep(0.2)
            assert text in chat_texts(on_a)

        await eventually(through_the_new_master, timeout=FAILOVER, interval=0.2)
        promoted = Redis.from_url(replica.url)
        try:
            assert (await promoted.info("replication"))["role"] == "master"
        finally:
            await promoted.aclose()
        for node in (a, b):
            assert await metric(node, "cluster_link_up") == 1
    finally:
        for process in reversed(processes):
            await process.stop()
