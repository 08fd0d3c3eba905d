"""``python -m bench``: run every scenario against roomserver and the baselines."""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path

from bench import report
from bench.harness import ROOT, ensure_node_modules
from bench.scenarios import chat, fanout
from bench.targets import node_baseline, ours, python_baseline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--sizes", default="100,1000,5000", help="room sizes for fan-out")
    parser.add_argument("--rates", default="10,100", help="fixed send rates (msg/s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chat-seconds", type=float, default=3.0)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)

    # 5,000 connections need as many descriptors in the server and the generators.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ensure_node_modules()
    (args.output.parent / "bench").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    sections = asyncio.run(
        run(
            sizes=tuple(int(size) for size in args.sizes.split(",")),
            rates=tuple(int(rate) for rate in args.rates.split(",")),
            repeats=args.repeats,
            chat_seconds=args.chat_seconds,
            plots=args.output.parent / "bench",
        )
    )
    command = "python -m bench" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    report.write(
        args.output,
        command=command,
        elapsed_s=time.monotonic() - started,
        repeats=args.repeats,
        sections=sections,
    )
    print(f"wrote {args.output}")
    return 0


async def run(
    *,
    sizes: tuple[int, ...],
    rates: tuple[int, ...],
    repeats: int,
    chat_seconds: float,
    plots: Path,
) -> list[str]:
    fanout_results = []
    async for result in fanout.run(
        [ours, python_baseline, node_baseline], sizes, repeats=repeats, rates=rates
    ):
        print(
            f"fan-out {result.server} N={result.size}: {result.delivered_per_s:,.0f}/s",
            flush=True,
        )
        fanout_results.append(result)
    chat_results = []
    async for chat_result in chat.run(
        ("SQLite", "PostgreSQL"), (1, 10, 100), repeats=repeats, seconds=chat_seconds
    ):
        print(
            f"chat {chat_result.backend} x{chat_result.senders}: {chat_result.acked_per_s:,.0f}/s",
            flush=True,
        )
        chat_results.append(chat_result)
    return [
        report.fanout_section(fanout_results, rates, plots),
        report.chat_section(chat_results),
    ]


if __name__ == "__main__":
    sys.exit(main())
