"""Many connections: 10,000 held for a minute, and a disconnect storm of 5,000.

*Held*: the clients connect (websocket, offering permessage-deflate as socket.io-client
does) and join one room, then stay idle for a minute while Engine.IO heartbeats run
(a ping every 25 s on every server here). Reported: the time to connect and join them
all and the server's CPU for it, its memory per connection once they are in, its CPU
over the minute, and how its memory moved during it.

*Storm*: clients connected and joined, then every one disconnects at once (a Socket.IO
disconnect each). Reported: the server's CPU time from the first close until it is idle
again: what leaving every room and forgetting every connection cost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from bench.harness import CpuMeter, LoadWorker, cpu_seconds, rss_bytes
from bench.scenarios.fanout import connect, split
from bench.targets import Target

WORKERS = 4  # Node load generators, each holding a share of the connections
IDLE_CPU_SECONDS = 0.01  # per half second: the storm is over


@dataclass
class HeldResult:
    server: str
    connections: int
    connect_s: float
    connect_cpu_per_connection: float  # the server's CPU seconds to connect and join one
    memory_per_connection: float  # bytes
    cpu_share: float  # of one core, over the hold
    growth_per_connection: float  # bytes, during the hold
    dropped: int  # connections the clients lost during the hold


@dataclass
class StormResult:
    server: str
    connections: int
    cpu_seconds: float
    seconds: float  # until the server was idle again


async def _connected(target: Target, count: int) -> tuple[list[LoadWorker], float]:
    workers = [await LoadWorker.start() for _ in range(WORKERS)]
    started = time.monotonic()
    try:
        await asyncio.gather(
            *(
                connect(worker, target, share)
                for worker, share in zip(workers, split(count, WORKERS), strict=True)
            )
        )
    except BaseException:
        for worker in workers:
            await worker.stop()
        raise
    return workers, time.monotonic() - started


async def held(target: Target, label: str, count: int, seconds: float) -> HeldResult:
    pid = target.server.pid
    before = rss_bytes(pid)
    with CpuMeter([pid]) as connecting:
        workers, connect_s = await _connected(target, count)
    try:
        await asyncio.sleep(1)  # let the server settle before reading its memory
        connected = rss_bytes(pid)
        with CpuMeter([pid]) as meter:
            await asyncio.sleep(seconds)
        stats = [await worker.request(op="stats") for worker in workers]
        return HeldResult(
            server=label,
            connections=count,
            connect_s=connect_s,
            connect_cpu_per_connection=connecting.cpu / count,
            memory_per_connection=(connected - before) / count,
            cpu_share=meter.share,
            growth_per_connection=(rss_bytes(pid) - connected) / count,
            dropped=sum(s["disconnects"] for s in stats),
        )
    finally:
        for worker in workers:
            await worker.stop()


async def storm(target: Target, label: str, count: int) -> StormResult:
    pid = target.server.pid
    workers, _ = await _connected(target, count)
    try:
        await asyncio.sleep(1)
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        await asyncio.gather(*(worker.request(op="close") for worker in workers))
        previous = current = cpu_before
        while time.monotonic() - started < 60:
            await asyncio.sleep(0.5)
            current = cpu_seconds(pid)
            if current - previous < IDLE_CPU_SECONDS:
                break
            previous = current
        seconds = time.monotonic() - started - 0.5  # the last half second was idle
        return StormResult(label, count, current - cpu_before, seconds)
    finally:
        for worker in workers:
            await worker.stop()


TargetFactory = Callable[[], AbstractAsyncContextManager[Target]]


async def run(
    targets: list[tuple[str, TargetFactory, bool]],
    *,
    held_count: int,
    hold_seconds: float,
    storm_count: int,
) -> AsyncIterator[HeldResult | StormResult]:
    """``targets``: (label, factory, whether to run the storm on it too)."""
    for label, make_target, with_storm in targets:
        async with make_target() as target:
            yield await held(target, label, held_count, hold_seconds)
        if with_storm:
            async with make_target() as target:  # a fresh process: nothing left of the hold
                yield await storm(target, label, storm_count)
