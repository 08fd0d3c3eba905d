"""Cross-node fan-out: one sender on one node, N receivers in one room spread over three
nodes sharing a Redis, against the same room on a single node, in the same run.

Every variant runs on PostgreSQL (a database of its own each), its servers and its
Redis pinned to the servers' core, the load generators to theirs. The relay is the
room fan-out scenario's (``presence:update`` -> ``presence:state``, ~100 bytes). For
each N: the maximum delivered messages per second (the sender sends as fast as it can;
repeated, median kept), end-to-end latency at fixed send rates, the CPU of every
server process (and Redis) during the bursts, and from Redis' own ``INFO
commandstats`` the commands it ran per broadcast (``PUBLISH`` and all of them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bench.harness import SERVER_CPU, CpuMeter, Histogram, LoadWorker, ServerProcess, pinned
from bench.harness import free_port as harness_free_port
from bench.scenarios.chat import postgres_database
from bench.scenarios.fanout import collect, connect, send, split
from bench.targets import Target, ours

NODES = 3
DELIVERIES_PER_BURST = 60_000
RATE_SECONDS = 3
SINGLE = "one node"
CLUSTER = f"{NODES} nodes through Redis"


@dataclass
class Burst:
    delivered_per_s: float
    complete: bool
    server_cpu: float  # every node and Redis, as a share of one core
    load_cpu: float
    publishes_per_broadcast: float | None
    commands_per_broadcast: float | None


@dataclass
class ClusterResult:
    variant: str
    size: int
    nodes: int
    bursts: list[Burst] = field(default_factory=list)
    latency: dict[int, Histogram | None] = field(default_factory=dict)

    def median(self, name: str) -> float | None:
        values = [getattr(b, name) for b in self.bursts if getattr(b, name) is not None]
        return statistics.median(values) if values else None

    @property
    def delivered_per_s(self) -> float:
        return statistics.median(b.delivered_per_s for b in self.bursts)

    @property
    def complete(self) -> bool:
        return all(b.complete for b in self.bursts)


# --- Redis of the run's own ---------------------------------------------------------------


@dataclass
class RedisServer:
    process: asyncio.subprocess.Process
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def commandstats(self) -> dict[str, int]:
        """Calls per command so far (``INFO commandstats``)."""
        client = Redis.from_url(self.url)
        try:
            info = await client.info("commandstats")
        finally:
            await client.aclose()
        return {
            name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in info.items()
            if isinstance(stats, dict)
        }


@asynccontextmanager
async def redis_server() -> AsyncIterator[RedisServer]:
    """A ``redis-server`` on a free port, on the servers' core, never the shared one."""
    port = harness_free_port()
    directory = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(directory)]
    process = await asyncio.create_subprocess_exec(
        *pinned(command, SERVER_CPU),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    server = RedisServer(process, port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                await server.commandstats()
                break
            except (OSError, RedisError):
                if time.monotonic() > deadline or process.returncode is not None:
                    raise
                await asyncio.sleep(0.05)
        yield server
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        shutil.rmtree(directory, ignore_errors=True)


# --- the variants -------------------------------------------------------------------------


@asynccontextmanager
async def single_node() -> AsyncIterator[list[Target]]:
    async with postgres_database() as url, ours(database_url=url) as target:
        yield [target]


@asynccontextmanager
async def three_nodes(redis: RedisServer) -> AsyncIterator[list[Target]]:
    """``ours`` (which migrates and makes the room) and two more processes with its
    settings, all on one database and one Redis."""
    settings = {"REDIS_URL": redis.url, "CLUSTER_CHANNEL_PREFIX": "bench"}
    async with postgres_database() as url, ours(database_url=url, settings=settings) as first:
        others: list[ServerProcess] = []
        directories: list[str] = []
        try:
            for _ in range(NODES - 1):
                port = harness_free_port()
                directory = tempfile.mkdtemp(prefix="bench-roomserver-")
                directories.append(directory)
                env = {**first.env, "PORT": str(port), "DATA_DIR": directory}
                others.append(
                    await ServerProcess.start(
                        "roomserver",
                        [sys.executable, "-m", "app"],
                        port,
                        env=env,
                        ready_path="/health",
                    )
                )
            yield [first] + [dataclasses.replace(first, server=server) for server in others]
        finally:
            for server in others:
                await server.stop()
            for directory in directories:
                shutil.rmtree(directory, ignore_errors=True)


async def run(
    sizes: Sequence[int], *, repeats: int, rates: tuple[int, ...]
) -> AsyncIterator[ClusterResult]:
    for size in sizes:
        async with single_node() as targets:
            yield await measure(SINGLE, targets, None, size, repeats=repeats, rates=rates)
        async with redis_server() as redis, three_nodes(redis) as targets:
            yield await measure(CLUSTER, targets, redis, size, repeats=repeats, rates=rates)


async def measure(
    variant: str,
    targets: list[Target],
    redis: RedisServer | None,
    size: int,
    *,
    repeats: int,
    rates: tuple[int, ...],
) -> ClusterResult:
    """Receivers spread evenly over ``targets``, one load worker each; the sender on
    the first."""
    workers = [await LoadWorker.start() for _ in targets]
    sender = await LoadWorker.start()
    try:
        for worker, target, count in zip(workers, targets, split(size, len(targets)), strict=True):
            await connect(worker, target, count, client="wire")
        await connect(sender, targets[0], 1)
        await asyncio.sleep(1)  # let subscriptions and the servers settle
        result = ClusterResult(variant, size, len(targets))
        server_pids = [t.server.pid for t in targets] + ([redis.process.pid] if redis else [])
        load_pids = [w.pid for w in [*workers, sender]]
        count = max(20, DELIVERIES_PER_BURST // size)
        for _ in range(repeats):
            result.bursts.append(
                await burst(targets[0], workers, sender, count, size, server_pids, load_pids, redis)
            )
        for rate in rates:
            if rate * size > result.delivered_per_s:
                result.latency[rate] = None
                continue
            result.latency[rate] = await at_rate(targets[0], workers, sender, rate, size)
        return result
    finally:
        for worker in [*workers, sender]:
            await worker.stop()


async def burst(
    target: Target,
    workers: list[LoadWorker],
    sender: LoadWorker,
    count: int,
    receivers: int,
    server_pids: list[int],
    load_pids: list[int],
    redis: RedisServer | None,
) -> Burst:
    for worker in workers:
        await worker.request(op="reset")
    before = await redis.commandstats() if redis else {}
    expected = count * receivers
    with CpuMeter(server_pids) as server_cpu, CpuMeter(load_pids) as load_cpu:
        sent = await send(target, sender, count, None)
        stats = await collect(workers, expected, within=90)
    after = await redis.commandstats() if redis else {}
    received = sum(s["received"] for s in stats)
    last = max(s["last_ms"] or 0 for s in stats)
    seconds = max((last - sent["first_ms"]) / 1000, 1e-3)
    publishes = commands = None
    if redis:
        # Less the INFO that read the stats before, and less the PINGs, SUBSCRIBEs...
        # of the nodes' links, which are counted in the total.
        calls = {name: after[name] - before.get(name, 0) for name in after}
        calls["info"] = calls.get("info", 0) - 1
        publishes = calls.get("publish", 0) / count
        commands = sum(calls.values()) / count
    return Burst(
        received / seconds,
        received >= expected,
        server_cpu.cpu / seconds,
        load_cpu.cpu / seconds,
        publishes,
        commands,
    )


async def at_rate(
    target: Target, workers: list[LoadWorker], sender: LoadWorker, rate: int, receivers: int
) -> Histogram:
    for worker in workers:
        await worker.request(op="reset")
    count = rate * RATE_SECONDS
    await send(target, sender, count, rate)
    stats = await collect(workers, count * receivers, within=60)
    histogram = Histogram()
    for s in stats:
        histogram.merge(s["hist"])
    return histogram
