"""Chat with persistence (issue 12, hot rooms): acknowledged sends, their latency, the
server's CPU per send, and the deliveries the rooms' members receive.

On each database, one server, its users made by ``bench.targets.seed_users`` and every
room a document of its own with its members added over REST. Every connection is a
member of exactly one room and listens for ``chat:message`` (counting the deliveries
and timing each from the stamp its text carries). In order:

- *hot*: one room of 10 senders, closed loop (each sends, waits for the ack, sends again);
- *open*: the same room, open loop: ``OPEN_RATE`` messages/s in all on a fixed schedule,
  spread over the 10 senders, none waiting for its previous ack;
- *solo*: 10 rooms of 1 sender each, closed loop: the same load with no fan-out at all;
- *fan-out*: a room of 100 members, the fan-out scenario's burst of ``presence:update``
  from one sender (bench/scenarios/fanout.py, ten times as long): this server's plain
  relay rate to 100;
- *large*: that room's 100 members all sending, closed loop; and, repeat by repeat in
  turn with it, *relay*: the same members and loop sending ``presence:update`` (the
  plain relay) instead of ``chat:send``: what storing and ordering cost on top of
  delivery, with everything else the same;
- *many*: 100 rooms of 2, 3, 4, 5, 2, ... people, every one sending, closed loop;
- *hot, short linger*: the hot room on a second server (and database) with
  ``CHAT_BATCH_LINGER_SECONDS`` at ``SHORT_LINGER`` (the default before 3 ms), repeat
  by repeat in turn with *hot*: what the default's longer wait for a batch's senders
  buys;
- *the baseline's room of 100* (once, after both databases): Node's socket.io 4
  (bench/node/server.mjs, which stores and checks nothing) measured the same two ways,
  one sender's burst and the 100 members' closed loop of acknowledged broadcasts: the
  large room's comparison applied to a plain relay.

Each closed or open run is repeated; the report takes medians.
"""

from __future__ import annotations

import dataclasses
import statistics
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bench.harness import CpuMeter, Histogram, LoadWorker, OthersMeter
from bench.scenarios import fanout
from bench.targets import BenchUser, Target, node_baseline, ours, room_of, seed_users

POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
HOT_SENDERS = 10
OPEN_RATE = 1_000  # messages/s in all, into the hot room
LARGE_ROOM = 100
MANY_ROOMS = 100
MANY_SIZES = (2, 3, 4, 5)
# A chat:message's text is the sender's {t,n,pad} stamp (bench/node/loadgen.mjs), as
# is a relayed presence:state's state.
LISTENS = {"chat:message": ["message", "text"], "presence:state": ["state"]}
# Every connection here is bench/node/wire.mjs's: a room of 100 receiving through
# socket.io-client saturates the load core before the server's.
CLIENT = "wire"
ACK_TIMEOUT_S = 60
# The hot room's comparison: the longest wait for a batch's senders, as it was before.
SHORT_LINGER = "0.001"
# The plain fan-out's bursts into the room of 100: ten times the fan-out section's, so
# that each lasts seconds and its CPU time (read in 10 ms ticks) is exact to about 1%.
BURST_DELIVERIES = 10 * fanout.DELIVERIES_PER_BURST


@dataclass
class ClosedLoop:
    """Rooms whose members all send, each waiting for its ack before the next."""

    rooms: int
    senders: int
    # What each sends: a chat message, or ``template`` (the room's document_id added)
    # with the stamp at ``path``.
    event: str = "chat:send"
    template: dict[str, Any] | None = None
    path: list[str] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # acked/s, per repeat
    deliveries: list[float] = field(default_factory=list)  # events received/s
    server_cpu: list[float] = field(default_factory=list)  # share of one core
    cpu_per_ack: list[float] = field(default_factory=list)  # server CPU s per acked send
    load_cpu: list[float] = field(default_factory=list)
    others_cpu: list[float] = field(default_factory=list)  # the rest of the machine
    acked: int = 0
    received: int = 0
    failed: int = 0
    first_error: str | None = None
    latency: Histogram = field(default_factory=Histogram)  # ack
    delivery: Histogram = field(default_factory=Histogram)  # send to receipt

    @property
    def acked_per_s(self) -> float:
        return statistics.median(self.rates)

    @property
    def delivered_per_s(self) -> float:
        return statistics.median(self.deliveries)

    @property
    def cpu_share(self) -> float:
        return statistics.median(self.server_cpu)

    @property
    def cpu_us_per_ack(self) -> float:
        return statistics.median(self.cpu_per_ack) * 1e6

    @property
    def load_share(self) -> float:
        return statistics.median(self.load_cpu)

    @property
    def others_share(self) -> float:
        return statistics.median(self.others_cpu)

    @property
    def deliveries_per_ack(self) -> float:
        return self.received / self.acked if self.acked else 0.0

    @property
    def delivered_per_core(self) -> float:
        """Deliveries per second of the server's CPU: its rate were it the limit."""
        return statistics.median(
            d / c for d, c in zip(self.deliveries, self.server_cpu, strict=True)
        )


@dataclass
class OpenLoop:
    """Sends on a fixed schedule, none waiting for an earlier ack."""

    rate: int
    senders: int
    sent: int = 0
    acked: int = 0
    failed: int = 0
    first_error: str | None = None
    max_late_ms: float = 0.0  # how far behind its schedule the generator fell
    latency: Histogram = field(default_factory=Histogram)  # from the time a send was due
    p99s: list[float] = field(default_factory=list)  # per repeat
    server_cpu: list[float] = field(default_factory=list)
    others_cpu: list[float] = field(default_factory=list)

    @property
    def all_acked(self) -> bool:
        return self.acked == self.sent and not self.failed

    @property
    def cpu_share(self) -> float:
        return statistics.median(self.server_cpu)

    @property
    def others_share(self) -> float:
        return statistics.median(self.others_cpu)


@dataclass
class ChatResult:
    backend: str
    hot: ClosedLoop
    hot_short_linger: ClosedLoop  # the hot room at SHORT_LINGER, in turn with ``hot``
    open: OpenLoop
    solo: ClosedLoop
    fanout: fanout.FanoutResult  # one sender's burst into the room of LARGE_ROOM
    large: ClosedLoop
    relay: ClosedLoop  # the large room's loop relaying presence:update instead
    many: ClosedLoop

    @property
    def large_vs_fanout(self) -> float:
        """The large room's chat deliveries/s over the plain fan-out rate to as many."""
        return self.large.delivered_per_s / self.fanout.delivered_per_s

    @property
    def large_vs_fanout_per_core(self) -> float:
        """The same, per second of server CPU on each side."""
        return self.large.delivered_per_core / self.fanout.delivered_per_core

    @property
    def large_vs_relay(self) -> float:
        return self.large.delivered_per_s / self.relay.delivered_per_s

    @property
    def large_vs_relay_per_core(self) -> float:
        return self.large.delivered_per_core / self.relay.delivered_per_core


@dataclass
class BaselineRoom:
    """Node's socket.io in a room of ``LARGE_ROOM``: one sender's burst, and the members'
    closed loop of acknowledged broadcasts (the relay stores and checks nothing)."""

    name: str
    fanout: fanout.FanoutResult
    relay: ClosedLoop

    @property
    def relay_vs_fanout(self) -> float:
        return self.relay.delivered_per_s / self.fanout.delivered_per_s

    @property
    def relay_vs_fanout_per_core(self) -> float:
        return self.relay.delivered_per_core / self.fanout.delivered_per_core


async def baseline_room(*, repeats: int, seconds: float) -> BaselineRoom:
    """The large room's two plain fan-outs, measured on Node's socket.io."""
    async with node_baseline() as target:
        plain = await fanout.run_size(
            target,
            LARGE_ROOM,
            repeats=repeats,
            rates=(),
            client=CLIENT,
            deliveries_per_burst=BURST_DELIVERIES,
        )
        # Each send the bare stamp, as the burst's (its template is empty).
        relay = ClosedLoop(
            1, LARGE_ROOM, event=target.send_event, template=target.template, path=target.path
        )
        worker = await LoadWorker.start()
        try:
            await fanout.connect(worker, target, LARGE_ROOM, client=CLIENT)
            await closed_loop(target, worker, relay, repeats=repeats, seconds=seconds)
        finally:
            await worker.stop()
    return BaselineRoom(target.name, plain, relay)


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


def cycled_sizes(rooms: int, sizes: tuple[int, ...] = MANY_SIZES) -> list[int]:
    return [sizes[index % len(sizes)] for index in range(rooms)]


def partition(users: list[BenchUser], sizes: list[int]) -> Iterator[list[BenchUser]]:
    start = 0
    for size in sizes:
        yield users[start : start + size]
        start += size


@asynccontextmanager
async def members_connected(
    target: Target, rooms: list[tuple[str, list[BenchUser]]]
) -> AsyncIterator[LoadWorker]:
    """A load worker with one connection per member of each room, joined to it."""
    worker = await LoadWorker.start()
    try:
        joins, tokens = [], []
        for document_id, members in rooms:
            for member in members:
                joins.append({"event": "join", "payload": {"document_id": document_id}})
                tokens.append(member.token)
        await worker.request(
            op="connect",
            url=target.server.url,
            count=len(tokens),
            tokens=tokens,
            joins=joins,
            listens=LISTENS,
            client=CLIENT,
            concurrency=50,
            timeout_ms=120_000,
        )
        yield worker
    finally:
        await worker.stop()


async def closed_loop(
    target: Target, worker: LoadWorker, result: ClosedLoop, *, repeats: int, seconds: float
) -> ClosedLoop:
    for _ in range(repeats):
        await worker.request(op="reset")
        with (
            CpuMeter([target.server.pid]) as server_cpu,
            CpuMeter([worker.pid]) as load_cpu,
            OthersMeter([target.server.pid, worker.pid]) as others,
        ):
            shape = (
                {"template": result.template, "path": result.path}
                if result.template is not None
                else {}
            )
            reply = await worker.request(
                op="chat_load",
                event=result.event,
                senders=result.senders,
                **shape,
                duration_ms=int(seconds * 1000),
                timeout_ms=ACK_TIMEOUT_S * 1000,
                reply_within=seconds + ACK_TIMEOUT_S + 30,
            )
        stats = await worker.request(op="stats")
        elapsed_s = reply["elapsed_ms"] / 1000
        result.rates.append(reply["acked"] / elapsed_s)
        result.deliveries.append(reply["received"] / elapsed_s)
        result.server_cpu.append(server_cpu.share)
        result.cpu_per_ack.append(server_cpu.cpu / max(reply["acked"], 1))
        result.load_cpu.append(load_cpu.share)
        result.others_cpu.append(others.share)
        result.acked += reply["acked"]
        result.received += reply["received"]
        result.failed += reply["failed"]
        result.first_error = result.first_error or reply["first_error"]
        result.latency.merge(reply["hist"])
        result.delivery.merge(stats["hist"])
    return result


async def in_turn(
    runs: list[tuple[Target, LoadWorker, ClosedLoop]], *, repeats: int, seconds: float
) -> None:
    """Each closed loop once a repeat, one after the other, so that the machine's slow
    spells hit them all alike."""
    for _ in range(repeats):
        for target, worker, result in runs:
            await closed_loop(target, worker, result, repeats=1, seconds=seconds)


async def open_loop(
    target: Target, worker: LoadWorker, result: OpenLoop, *, repeats: int, seconds: float
) -> OpenLoop:
    for _ in range(repeats):
        with (
            CpuMeter([target.server.pid]) as server_cpu,
            OthersMeter([target.server.pid, worker.pid]) as others,
        ):
            reply = await worker.request(
                op="chat_rate",
                event="chat:send",
                senders=result.senders,
                rate=result.rate,
                duration_ms=int(seconds * 1000),
                timeout_ms=ACK_TIMEOUT_S * 1000,
                reply_within=seconds + ACK_TIMEOUT_S + 30,
            )
        result.sent += reply["sent"]
        result.acked += reply["acked"]
        result.failed += reply["failed"]
        result.first_error = result.first_error or reply["first_error"]
        result.max_late_ms = max(result.max_late_ms, reply["max_late_ms"])
        result.latency.merge(reply["hist"])
        p99 = Histogram().merge(reply["hist"]).percentile(0.99)
        if p99 is not None:
            result.p99s.append(p99)
        result.server_cpu.append(server_cpu.share)
        result.others_cpu.append(others.share)
    return result


async def measure(
    backend_name: str, target: Target, short: Target, *, repeats: int, seconds: float
) -> ChatResult:
    """Every scenario on ``target``; the hot room also on ``short`` (the server at
    ``SHORT_LINGER``), taking turns with ``target``'s."""
    sizes = cycled_sizes(MANY_ROOMS)
    users = await seed_users(target, max(sum(sizes), LARGE_ROOM, HOT_SENDERS), "chat")
    hot_room = await room_of(target, users[:HOT_SENDERS])
    solo_rooms = [(await room_of(target, [user]), [user]) for user in users[:HOT_SENDERS]]
    large_room = await room_of(target, users[:LARGE_ROOM])
    many_rooms = [(await room_of(target, group), group) for group in partition(users, sizes)]
    short_users = await seed_users(short, HOT_SENDERS, "hot")
    short_room = await room_of(short, short_users)
    timing: dict[str, Any] = {"repeats": repeats, "seconds": seconds}

    hot, hot_short = ClosedLoop(1, HOT_SENDERS), ClosedLoop(1, HOT_SENDERS)
    async with (
        members_connected(target, [(hot_room, users[:HOT_SENDERS])]) as worker,
        members_connected(short, [(short_room, short_users)]) as short_worker,
    ):
        await in_turn([(target, worker, hot), (short, short_worker, hot_short)], **timing)
        opened = await open_loop(target, worker, OpenLoop(OPEN_RATE, HOT_SENDERS), **timing)
    async with members_connected(target, solo_rooms) as worker:
        solo = await closed_loop(target, worker, ClosedLoop(HOT_SENDERS, HOT_SENDERS), **timing)
    # The fan-out scenario's own method, into the same room of 100 members.
    burst_target = dataclasses.replace(
        target,
        join={"event": "join", "payload": {"document_id": large_room}},
        template={"document_id": large_room, "state": {}},
        tokens=[user.token for user in users[:LARGE_ROOM]],
    )
    plain = await fanout.run_size(
        burst_target,
        LARGE_ROOM,
        repeats=repeats,
        rates=(),
        client=CLIENT,
        deliveries_per_burst=BURST_DELIVERIES,
    )
    large = ClosedLoop(1, LARGE_ROOM)
    relay = ClosedLoop(
        1, LARGE_ROOM, event="presence:update", template={"state": {}}, path=["state"]
    )
    async with members_connected(target, [(large_room, users[:LARGE_ROOM])]) as worker:
        await in_turn([(target, worker, large), (target, worker, relay)], **timing)
    async with members_connected(target, many_rooms) as worker:
        many = await closed_loop(target, worker, ClosedLoop(MANY_ROOMS, sum(sizes)), **timing)
    return ChatResult(backend_name, hot, hot_short, opened, solo, plain, large, relay, many)


async def run(
    backends: tuple[str, ...], *, repeats: int, seconds: float
) -> AsyncIterator[ChatResult]:
    short = {"CHAT_BATCH_LINGER_SECONDS": SHORT_LINGER}
    for backend_name in backends:
        async with (
            backend(backend_name) as url,
            ours(database_url=url) as target,
            backend(backend_name) as short_url,
            ours(database_url=short_url, settings=short) as short_target,
        ):
            yield await measure(
                backend_name, target, short_target, repeats=repeats, seconds=seconds
            )
