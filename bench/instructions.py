"""``python -m bench.instructions``: the server's CPU instructions per acked chat message.

The suite's CPU figures move with the machine (a shared one's slow spells move them by a
third); an instruction count does not: the server runs under ``valgrind --tool=callgrind``
with instrumentation off until the load starts (start-up, joins and a warm-up are not
counted), and the count of the load itself, repeated, agrees to a fraction of a percent.
It is the measure for an A/B of a change to the message path: run it on each tree (or
each interpreter: the servers run on the Python that runs this), same arguments.

The load is the chat scenario's closed loop (bench/scenarios/chat.py), each sender
sending ``--messages`` messages: ``room``, 10 members of one room, each message to all
10; ``solo``, 10 rooms of one (the cost with no fan-out); ``many``, 100 rooms of 2-5.
Instructions are not seconds (a cache miss or a system call's kernel work counts
nothing here) and valgrind runs the server 20-50 times slower, which makes batches
bigger than at full speed: compare counts with each other, not with the suite's
microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.scenarios.chat import MANY_ROOMS, backend, cycled_sizes, members_connected, partition
from bench.targets import BenchUser, Target, ours, room_of, seed_users

WARM_UP = 20  # messages per sender before counting (first batches, caches, imports)


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


async def measure(scenario: str, backend_name: str, messages: int) -> dict[str, Any]:
    out_dir = Path(tempfile.mkdtemp(prefix="bench-callgrind-"))
    under = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir}/callgrind.out.%p",
    ]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--scenario", choices=("room", "solo", "many"), default="room")
    parser.add_argument("--backend", choices=("PostgreSQL", "SQLite"), default="PostgreSQL")
    parser.add_argument("--messages", type=int, default=300, help="per sender, counted")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("needs valgrind (and its callgrind_control)")
    for _ in range(args.repeats):
        result = asyncio.run(measure(args.scenario, args.backend, args.messages))
        print(
            f"{args.scenario} on {args.backend}, Python {sys.version.split()[0]} "
            f"({sys.base_prefix}), EVENT_LOOP={os.environ.get('EVENT_LOOP', 'auto')}: "
            f"{result['acked']:,.0f} acked, "
            f"{result['per_message']:,.0f} instructions per message",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
