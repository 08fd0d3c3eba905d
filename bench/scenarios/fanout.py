"""Room fan-out: one sender, N receivers in one room, ~100-byte messages.

For each server and room size: time to connect and join everyone, server memory per
connection, the maximum delivered messages per second (the sender sends as fast as it
can; repeated, median kept), and end-to-end latency at fixed send rates.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from bench.harness import CpuMeter, Histogram, LoadWorker, rss_bytes
from bench.targets import Target

PAD = 60  # with the timestamp and counter: a ~100-byte payload on the wire
DELIVERIES_PER_BURST = 100_000
RATE_SECONDS = 3


@dataclass
class Throughput:
    delivered_per_s: float
    complete: bool
    server_cpu: float
    load_cpu: float


@dataclass
class FanoutResult:
    server: str
    size: int
    connect_s: float
    join_p50_ms: float
    join_p99_ms: float
    memory_per_connection: float
    bursts: list[Throughput] = field(default_factory=list)
    # None: the rate needs more deliveries per second than the server's maximum;
    # its "latency" would only be the length of a growing queue.
    latency: dict[int, Histogram | None] = field(default_factory=dict)

    @property
    def delivered_per_s(self) -> float:
        return statistics.median(burst.delivered_per_s for burst in self.bursts)

    @property
    def complete(self) -> bool:
        return all(burst.complete for burst in self.bursts)

    @property
    def server_cpu(self) -> float:
        return statistics.median(burst.server_cpu for burst in self.bursts)

    @property
    def load_cpu(self) -> float:
        return statistics.median(burst.load_cpu for burst in self.bursts)

    @property
    def delivered_per_core(self) -> float:
        """Deliveries per second of the server's CPU: its rate were it the limit."""
        return statistics.median(b.delivered_per_s / b.server_cpu for b in self.bursts)


async def run_size(
    target: Target,
    size: int,
    *,
    repeats: int,
    rates: tuple[int, ...],
    client: str | None = None,
    deliveries_per_burst: int = DELIVERIES_PER_BURST,
) -> FanoutResult:
    """``client="wire"``: the receivers are bench/node/wire.mjs connections, which cost
    the load core less per delivery than socket.io-client (the sender is the latter)."""
    workers = [await LoadWorker.start() for _ in range(2 if size >= 1000 else 1)]
    sender = await LoadWorker.start()
    try:
        baseline_rss = rss_bytes(target.server.pid)
        started = time.monotonic()
        replies = await asyncio.gather(
            *(
                connect(worker, target, count, client=client)
                for worker, count in zip(workers, split(size, len(workers)), strict=True)
            )
        )
        connect_s = time.monotonic() - started
        await connect(sender, target, 1)
        await asyncio.sleep(1)  # let the server settle before reading its memory
        memory = (rss_bytes(target.server.pid) - baseline_rss) / size
        result = FanoutResult(
            server=target.name,
            size=size,
            connect_s=connect_s,
            join_p50_ms=statistics.median(r["join_ms"]["p50"] for r in replies),
            join_p99_ms=max(r["join_ms"]["p99"] for r in replies),
            memory_per_connection=memory,
        )
        meter_pids = [worker.pid for worker in [*workers, sender]]
        burst = max(20, deliveries_per_burst // size)
        for _ in range(repeats):
            result.bursts.append(await burst_once(target, workers, sender, burst, size, meter_pids))
        for rate in rates:
            if rate * size > result.delivered_per_s:
                result.latency[rate] = None
                continue
            result.latency[rate] = await at_rate(target, workers, sender, rate, size)
        return result
    finally:
        for worker in [*workers, sender]:
            await worker.stop()


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def connect(
    worker: LoadWorker, target: Target, count: int, *, client: str | None = None
) -> dict[str, Any]:
    return await worker.request(
        op="connect",
        client=client,
        url=target.server.url,
        count=count,
        tokens=target.tokens,
        join=target.join,
        listen=target.listen,
        extract=target.extract,
        concurrency=100,
        timeout_ms=240_000,
    )


async def send(target: Target, sender: LoadWorker, count: int, rate: int | None) -> dict[str, Any]:
    return await sender.request(
        op="send",
        event=target.send_event,
        template=target.template,
        path=target.path,
        count=count,
        rate=rate,
        pad=PAD,
        ack=False,
        reply_within=600,
    )


async def collect(workers: list[LoadWorker], expected: int, within: float) -> list[dict[str, Any]]:
    """Poll the receivers until ``expected`` deliveries arrived or ``within`` s passed."""
    deadline = time.monotonic() + within
    while True:
        stats = [await worker.request(op="stats") for worker in workers]
        received = sum(s["received"] for s in stats)
        if received >= expected or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.25)


async def burst_once(
    target: Target,
    workers: list[LoadWorker],
    sender: LoadWorker,
    count: int,
    receivers: int,
    pids: list[int],
) -> Throughput:
    for worker in workers:
        await worker.request(op="reset")
    expected = count * receivers
    with CpuMeter([target.server.pid]) as server_cpu, CpuMeter(pids) as load_cpu:
        sent = await send(target, sender, count, None)
        stats = await collect(workers, expected, within=90)
    received = sum(s["received"] for s in stats)
    last = max(s["last_ms"] or 0 for s in stats)
    seconds = max((last - sent["first_ms"]) / 1000, 1e-3)
    # CPU shares over the burst itself, not over the meters' window, which also holds
    # the wait for the receivers' counts (up to a poll interval after the burst ended).
    return Throughput(
        received / seconds,
        received >= expected,
        server_cpu.cpu / seconds,
        load_cpu.cpu / seconds,
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


TargetFactory = Callable[[], AbstractAsyncContextManager[Target]]


async def run(
    targets: list[TargetFactory], sizes: tuple[int, ...], *, repeats: int, rates: tuple[int, ...]
) -> AsyncIterator[FanoutResult]:
    for make_target in targets:
        async with make_target() as target:
            for size in sizes:
                yield await run_size(target, size, repeats=repeats, rates=rates)
