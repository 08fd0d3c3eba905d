"""``python -m bench.instructions``: the server's CPU instructions per chat message or join.

The suite's CPU figures move with the machine (a shared one's slow spells move them by a
third); an instruction count does not: the server runs under ``valgrind --tool=callgrind``
with instrumentation off until the load starts (start-up, the set-up and a warm-up are
not counted), and the count of the load itself, repeated, agrees to a fraction of a
percent. It is the measure for an A/B of a change to the message or join path: run it on
each tree (or each interpreter: the servers run on the Python that runs this), same
arguments.

The load is the chat scenario's closed loop (bench/scenarios/chat.py), each sender
sending ``--messages`` messages: ``room``, 10 members of one room, each message to all
10; ``solo``, 10 rooms of one (the cost with no fan-out); ``many``, 100 rooms of 2-5.
Or ``joins``: the joins scenario's burst (bench/scenarios/joins.py), ``--users``
distinct members connecting and joining one room that holds a backlog (``--catch-up``:
with ``since_seq: 0``), counted until the server is idle again (the presence events the
joins queued are their cost too), after a warm-up of ``WARM_UP_JOINS`` other members who
stay; the figure is instructions per join. Instructions are not seconds (a cache miss or
a system call's kernel work counts nothing here) and valgrind runs the server 20-50
times slower, which makes batches bigger than at full speed: compare counts with each
other, not with the suite's microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench.harness import LoadWorker
from bench.scenarios import joins
from bench.scenarios.chat import MANY_ROOMS, backend, cycled_sizes, members_connected, partition
from bench.targets import BenchUser, Target, ours, room_of, seed_users

WARM_UP = 20  # messages per sender before counting (first batches, caches, imports)
WARM_UP_JOINS = 50  # members joining before the counted ones (imports, caches, pools)


async def rooms_for(target: Target, scenario: str) -> list[tuple[str, list[BenchUser]]]:
    if scenario == "many":
        sizes = cycled_sizes(MANY_ROOMS)
        users = await seed_users(target, sum(sizes), "instructions")
        return [(await room_of(target, group), group) for group in partition(users, sizes)]
    users = await seed_users(target, 10, "instructions")
    if scenario == "solo":
        return [(await room_of(target, [user]), [user]) for user in users]
    return [(await room_of(target, users), users)]


def callgrind_control(pid: int, *options: str) -> None:
    subprocess.run(["callgrind_control", *options, str(pid)], check=True, capture_output=True)


def counted(out_dir: Path) -> int:
    """Instructions in every dump of the run (``totals:`` of each part file)."""
    total = 0
    for part in out_dir.glob("callgrind.out.*"):
        for line in part.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


def callgrind(out_dir: Path) -> list[str]:
    """The command prefix that runs a server under callgrind, counting nothing yet."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir}/callgrind.out.%p",
    ]


async def measure(scenario: str, backend_name: str, messages: int) -> dict[str, Any]:
    out_dir = Path(tempfile.mkdtemp(prefix="bench-callgrind-"))
    under = callgrind(out_dir)
    try:
        async with backend(backend_name) as url, ours(database_url=url, under=under) as target:
            rooms = await rooms_for(target, scenario)
            senders = sum(len(members) for _, members in rooms)
            async with members_connected(target, rooms) as worker:
                load: dict[str, Any] = {
                    "op": "chat_load",
                    "event": "chat:send",
                    "senders": senders,
                    "duration_ms": 3_600_000,  # until ``count`` each: the count ends it
                    "timeout_ms": 600_000,
                }
                await worker.request(reply_within=3_600, **load, count=WARM_UP)
                pid = target.server.pid
                callgrind_control(pid, "--zero")
                callgrind_control(pid, "--instr=on")
                reply = await worker.request(reply_within=3_600, **load, count=messages)
                callgrind_control(pid, "--instr=off")
                callgrind_control(pid, "--dump")
        instructions = counted(out_dir)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    acked = reply["acked"]
    if reply["failed"] or acked != senders * messages:
        raise RuntimeError(f"{acked} of {senders * messages} acked: {reply['first_error']}")
    return {"acked": acked, "instructions": instructions, "per_message": instructions / acked}


@asynccontextmanager
async def joined(target: Target, tokens: list[str]) -> AsyncIterator[list[dict[str, Any]]]:
    """``tokens``' members connect and join, ``joins.WORKERS`` generators at once (as
    the joins scenario does): each generator's reply; they leave on exit."""
    slices = joins.per_worker(dataclasses.replace(target, tokens=tokens), len(tokens))
    workers = [await LoadWorker.start() for _ in slices]
    try:
        yield list(
            await asyncio.gather(
                *(
                    joins.join_request(worker, members, share)
                    for worker, (members, share) in zip(workers, slices, strict=True)
                )
            )
        )
    finally:
        for worker in workers:
            await worker.stop()


async def measure_joins(backend_name: str, users: int, catch_up: bool) -> dict[str, Any]:
    out_dir = Path(tempfile.mkdtemp(prefix="bench-callgrind-"))
    try:
        async with (
            backend(backend_name) as url,
            ours(database_url=url, under=callgrind(out_dir)) as target,
        ):
            room = await joins.roomserver_room(target, WARM_UP_JOINS + users, catch_up)
            assert room.tokens is not None
            pid = target.server.pid
            # The warm-up's members stay, and the counted ones leave only once counted:
            # leaving is not a join's cost.
            async with joined(room, room.tokens[:WARM_UP_JOINS]):
                await joins.idle(pid)
                callgrind_control(pid, "--zero")
                callgrind_control(pid, "--instr=on")
                async with joined(room, room.tokens[WARM_UP_JOINS:]) as replies:
                    await joins.idle(pid)
                    callgrind_control(pid, "--instr=off")
                    callgrind_control(pid, "--dump")
        instructions = counted(out_dir)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    done = sum(reply["connected"] for reply in replies)
    if done != users:
        raise RuntimeError(f"{done} of {users} joined")
    return {"joined": done, "instructions": instructions, "per_join": instructions / done}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--scenario", choices=("room", "solo", "many", "joins"), default="room")
    parser.add_argument("--backend", choices=("PostgreSQL", "SQLite"), default="PostgreSQL")
    parser.add_argument("--messages", type=int, default=300, help="per sender, counted")
    parser.add_argument("--users", type=int, default=300, help="joins: members joining, counted")
    parser.add_argument("--catch-up", action="store_true", help="joins: with since_seq 0")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("needs valgrind (and its callgrind_control)")
    ran_on = (
        f"on {args.backend}, Python {sys.version.split()[0]} ({sys.base_prefix}), "
        f"EVENT_LOOP={os.environ.get('EVENT_LOOP', 'auto')}"
    )
    for _ in range(args.repeats):
        if args.scenario == "joins":
            burst = asyncio.run(measure_joins(args.backend, args.users, args.catch_up))
            variant = "joins with since_seq 0" if args.catch_up else "joins"
            print(
                f"{variant} {ran_on}: {burst['joined']:,} joined, "
                f"{burst['per_join']:,.0f} instructions per join",
                flush=True,
            )
            continue
        result = asyncio.run(measure(args.scenario, args.backend, args.messages))
        print(
            f"{args.scenario} {ran_on}: {result['acked']:,.0f} acked, "
            f"{result['per_message']:,.0f} instructions per message",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
