"""Chat with persistence: acknowledged sends per second and ack latency.

All senders share one room: the hot-room case. Sends to one document are ordered by
design (seq is taken and broadcast under the document's lock), so this measures the
cost of that order plus the database commit plus the fan-out to the other senders.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg

from bench.harness import CpuMeter, Histogram, LoadWorker
from bench.scenarios.fanout import connect
from bench.targets import ours

POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class ChatResult:
    backend: str
    senders: int
    rates: list[float] = field(default_factory=list)
    failed: int = 0
    latency: Histogram = field(default_factory=Histogram)
    server_cpu: list[float] = field(default_factory=list)

    @property
    def acked_per_s(self) -> float:
        return statistics.median(self.rates)


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A database of its own for this run, dropped afterwards."""
    name = f"rs_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def backend(name: str) -> AsyncIterator[str | None]:
    if name == "PostgreSQL":
        async with postgres_database() as url:
            yield url
    else:
        yield None  # the embedded default: SQLite in DATA_DIR


async def run(
    backends: tuple[str, ...], concurrency: tuple[int, ...], *, repeats: int, seconds: float
) -> AsyncIterator[ChatResult]:
    for backend_name in backends:
        async with backend(backend_name) as url, ours(database_url=url) as target:
            worker = await LoadWorker.start()
            try:
                # Nobody listens for a real event: the chat:message fan-out to the
                # other senders still happens, but its receipt is not the measure.
                await connect(worker, target, max(concurrency))
                for senders in concurrency:
                    result = ChatResult(backend_name, senders)
                    for _ in range(repeats):
                        with CpuMeter([target.server.pid]) as server_cpu:
                            reply = await worker.request(
                                op="chat_load",
                                event="chat:send",
                                make={"document_id": target.extra["document_id"]},
                                duration_ms=int(seconds * 1000),
                                senders=senders,
                                timeout_ms=int(seconds * 1000) + 60_000,
                                reply_within=seconds + 90,
                            )
                        result.rates.append(reply["acked"] / (reply["elapsed_ms"] / 1000))
                        result.failed += reply["failed"]
                        result.latency.merge(reply["hist"])
                        result.server_cpu.append(server_cpu.share)
                    yield result
            finally:
                await worker.stop()
