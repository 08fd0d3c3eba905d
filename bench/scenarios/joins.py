"""Joins (issue 12): many distinct users connect and join one room at once.

roomserver tells everyone already in a room when a new user's first connection joins
(``presence:joined``), so N users joining one after another cost it about N²/2
deliveries; the Node baseline's join tells nobody. Each run is a fresh server. For
roomserver: ``users`` users made by ``bench.targets.seed_users``, all members of one
document (REST), which first gets ``BACKLOG`` chat messages; its variant joins with
``since_seq: 0``, so that every join ack also carries that backlog (one catch-up page).

Measured: the wall time from the first connect to the last join ack; the server's CPU
time from the first connect until it is idle again (what it still sends after the last
ack, the ``presence:joined`` queued to everyone, is the joins' cost too), per join; the
join latencies; and the presence events (``presence:joined``, or ``presence:changed``,
the batched form) the clients received.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Any

from bench.harness import CpuMeter, LoadWorker, OthersMeter, cpu_seconds
from bench.scenarios.chat import CLIENT, members_connected
from bench.scenarios.fanout import split
from bench.targets import Target, room_of, seed_users

WORKERS = 4  # Node load generators, each joining a share of the users...
CONCURRENCY = 100  # ...this many at a time (as the connections scenario does)
JOIN_TIMEOUT_S = 240
BACKLOG = 100  # messages in the room before the joins: roomserver's catch-up page
# The baseline for joins with catch-up: Node's join acks carry as many messages.
NODE_WITH_BACKLOG = f"Node socket.io 4, join ack with {BACKLOG} messages"
IDLE_CPU_SECONDS = 0.01  # per half second: the server has finished
IDLE_WITHIN_S = 120


@dataclass
class JoinResult:
    server: str
    users: int
    catch_up: bool
    walls: list[float] = field(default_factory=list)  # s, first connect to last join ack
    cpu: list[float] = field(default_factory=list)  # server CPU s, until idle again
    cpu_at_ack: list[float] = field(default_factory=list)  # ...until the last join ack
    load_cpu: list[float] = field(default_factory=list)  # share of a core, until the last ack
    others_cpu: list[float] = field(default_factory=list)  # the rest of the machine, the same
    join_p50_ms: list[float] = field(default_factory=list)
    join_p99_ms: list[float] = field(default_factory=list)
    presence: list[int] = field(default_factory=list)  # presence events the clients received
    caught_up: list[int] = field(default_factory=list)  # messages in the join acks
    listed: list[int] = field(default_factory=list)  # users in the join acks' presence

    @property
    def wall_s(self) -> float:
        return statistics.median(self.walls)

    @property
    def cpu_us_per_join(self) -> float:
        return statistics.median(self.cpu) / self.users * 1e6

    @property
    def cpu_us_per_join_at_ack(self) -> float:
        return statistics.median(self.cpu_at_ack) / self.users * 1e6


async def roomserver_room(target: Target, users: int, catch_up: bool) -> Target:
    """``target`` made to join ``users`` distinct members of a new document with a backlog."""
    members = await seed_users(target, users, "join")
    document_id = await room_of(target, members)
    async with members_connected(target, [(document_id, members[:1])]) as poster:
        posted = await poster.request(op="chat_load", event="chat:send", senders=1, count=BACKLOG)
    if posted["acked"] != BACKLOG:
        raise RuntimeError(f"the backlog: {posted['acked']} of {BACKLOG} acked")
    payload: dict[str, Any] = {"document_id": document_id}
    if catch_up:
        payload["since_seq"] = 0
    return replace(
        target,
        join={"event": "join", "payload": payload},
        tokens=[member.token for member in members],
    )


async def idle(pid: int) -> None:
    previous, started = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - started < IDLE_WITHIN_S:
        await asyncio.sleep(0.5)
        current = cpu_seconds(pid)
        if current - previous < IDLE_CPU_SECONDS:
            return
        previous = current


def per_worker(target: Target, users: int) -> list[tuple[Target, int]]:
    """``users`` joins split over ``WORKERS`` generators: each its share, and (distinct
    users) its own slice of the target's tokens."""
    slices, start = [], 0
    for share in split(users, WORKERS):
        tokens = target.tokens[start : start + share] if target.tokens else None
        slices.append((replace(target, tokens=tokens), share))
        start += share
    return slices


async def join_once(target: Target, result: JoinResult) -> None:
    slices = per_worker(target, result.users)
    workers = [await LoadWorker.start() for _ in slices]
    try:
        for worker in workers:
            await worker.request(op="reset")
        pid = target.server.pid
        with CpuMeter([pid]) as until_idle:
            loads = [w.pid for w in workers]
            with (
                CpuMeter([pid]) as at_ack,
                CpuMeter(loads) as load,
                OthersMeter([pid, *loads]) as others,
            ):
                replies = await asyncio.gather(
                    *(
                        join_request(worker, members, share)
                        for worker, (members, share) in zip(workers, slices, strict=True)
                    )
                )
            await idle(pid)
        stats = [await worker.request(op="stats") for worker in workers]
    finally:
        for worker in workers:
            await worker.stop()
    result.walls.append(at_ack.elapsed)
    result.cpu.append(until_idle.cpu)
    result.cpu_at_ack.append(at_ack.cpu)
    result.load_cpu.append(load.share)
    result.others_cpu.append(others.share)
    result.join_p50_ms.append(statistics.median(r["join_ms"]["p50"] for r in replies))
    result.join_p99_ms.append(max(r["join_ms"]["p99"] for r in replies))
    result.presence.append(sum(s["received"] for s in stats))
    result.caught_up.append(sum(r["join_messages"] for r in replies))
    result.listed.append(sum(r["join_presence"] for r in replies))


async def join_request(worker: LoadWorker, target: Target, count: int) -> dict[str, Any]:
    return await worker.request(
        op="connect",
        client=CLIENT,
        url=target.server.url,
        count=count,
        tokens=target.tokens,
        join=target.join,
        # Counted only; presence:changed is the batched form another change is bringing.
        listens={"presence:joined": None, "presence:changed": None},
        concurrency=CONCURRENCY,
        timeout_ms=JOIN_TIMEOUT_S * 1000,
        reply_within=JOIN_TIMEOUT_S + 30,
    )


TargetFactory = Callable[[], AbstractAsyncContextManager[Target]]


async def run(
    targets: list[tuple[str, TargetFactory, bool | None]], *, users: int, repeats: int
) -> AsyncIterator[JoinResult]:
    """``targets``: (label, factory, catch_up): ``None`` for a baseline (no users, no
    backlog), else whether roomserver's joins carry ``since_seq: 0``. The repeats take
    turns (one run of each target, then the next round), so a slow spell of a shared
    machine falls on every target alike."""
    results = [JoinResult(label, users, bool(catch_up)) for label, _, catch_up in targets]
    for _ in range(repeats):
        for (_, make_target, catch_up), result in zip(targets, results, strict=True):
            async with make_target() as target:
                if catch_up is not None:
                    target = await roomserver_room(target, users, catch_up)
                await join_once(target, result)
    for result in results:
        yield result
