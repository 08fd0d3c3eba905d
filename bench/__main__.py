"""``python -m bench``: run every scenario against roomserver and the baselines.

``--only documents`` (or ``fanout``, ``connections``, ``chat``, ``joins``, ``assistant``,
``cluster``, ``knowledge``, comma-separated) runs some of them and keeps the other
sections of the existing report, each credited to the run that measured it.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from functools import partial
from pathlib import Path

from bench import report
from bench.harness import ROOT, ensure_node_modules, yardstick_ms
from bench.scenarios import assistant, chat, cluster, connections, documents, fanout, knowledge
from bench.scenarios import joins as joining
from bench.targets import (
    node_baseline,
    ours,
    python_baseline,
    yjs_node_baseline,
    yjs_ours,
    yjs_python_baseline,
)

COMPRESSION = {"WEBSOCKET_COMPRESSION": "true"}
NO_GC_FREEZE = {"GC_FREEZE": "false"}
PYTHON_GC_THRESHOLD = {"GC_YOUNG_THRESHOLD": "700"}  # CPython's own
SCENARIOS = (
    "fanout",
    "connections",
    "chat",
    "joins",
    "documents",
    "assistant",
    "cluster",
    "knowledge",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--sizes", default="100,1000,5000", help="room sizes for fan-out")
    parser.add_argument("--rates", default="10,100", help="fixed send rates (msg/s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--held", type=int, default=10_000, help="connections to hold")
    parser.add_argument("--hold-seconds", type=float, default=60.0)
    parser.add_argument("--storm", type=int, default=5_000, help="clients disconnecting at once")
    parser.add_argument("--chat-seconds", type=float, default=3.0, help="length of a chat run")
    parser.add_argument(
        "--join-users", type=int, default=1_000, help="distinct users joining one room"
    )
    parser.add_argument(
        "--yjs-rates", default="20,40", help="keystrokes/s in all, among 10 typists of 100"
    )
    parser.add_argument("--yjs-seconds", type=float, default=3.0, help="length of a typing run")
    parser.add_argument("--join-bytes", type=int, default=1_000_000, help="document to join")
    parser.add_argument("--joins", type=int, default=7, help="fresh clients joining it")
    parser.add_argument(
        "--cluster-sizes", default="300,3000", help="room sizes for cross-node fan-out"
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help="scenarios to run (comma-separated); the report keeps the others' sections",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = set(only) - set(SCENARIOS)
    if unknown or not only:
        parser.error(f"--only takes some of {', '.join(SCENARIOS)}")

    # 5,000 connections need as many descriptors in the server and the generators.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ensure_node_modules()
    (args.output.parent / "bench").mkdir(parents=True, exist_ok=True)
    yardstick_at_start = yardstick_ms()
    started = time.monotonic()
    sections = asyncio.run(
        run(
            sizes=tuple(int(size) for size in args.sizes.split(",")),
            rates=tuple(int(rate) for rate in args.rates.split(",")),
            repeats=args.repeats,
            held=args.held,
            hold_seconds=args.hold_seconds,
            storm=args.storm,
            chat_seconds=args.chat_seconds,
            join_users=args.join_users,
            yjs_rates=tuple(int(rate) for rate in args.yjs_rates.split(",")),
            yjs_seconds=args.yjs_seconds,
            join_bytes=args.join_bytes,
            joins=args.joins,
            cluster_sizes=tuple(int(size) for size in args.cluster_sizes.split(",")),
            only=only,
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
        yardstick_ms=(yardstick_at_start, yardstick_ms()),
        keep_others=set(only) != set(SCENARIOS),
    )
    print(f"wrote {args.output}")
    return 0


async def run(
    *,
    sizes: tuple[int, ...],
    rates: tuple[int, ...],
    repeats: int,
    held: int,
    hold_seconds: float,
    storm: int,
    chat_seconds: float,
    join_users: int,
    yjs_rates: tuple[int, ...],
    yjs_seconds: float,
    join_bytes: int,
    joins: int,
    cluster_sizes: tuple[int, ...],
    only: tuple[str, ...],
    plots: Path,
) -> list[str]:
    sections = []
    if "fanout" in only:
        fanout_results = []
        async for result in fanout.run(
            [ours, python_baseline, node_baseline], sizes, repeats=repeats, rates=rates
        ):
            print(
                f"fan-out {result.server} N={result.size}: {result.delivered_per_s:,.0f}/s",
                flush=True,
            )
            fanout_results.append(result)
        sections.append(report.fanout_section(fanout_results, rates, plots))
    if "connections" in only:
        connection_results = []
        variants: list[tuple[str, connections.TargetFactory, bool]] = [
            ("roomserver", ours, True),
            ("roomserver, WEBSOCKET_COMPRESSION=true", partial(ours, settings=COMPRESSION), False),
            ("roomserver, GC_FREEZE=false", partial(ours, settings=NO_GC_FREEZE), True),
            ("Node socket.io 4", node_baseline, True),
        ]
        async for connection_result in connections.run(
            variants, held_count=held, hold_seconds=hold_seconds, storm_count=storm
        ):
            r = connection_result
            if isinstance(r, connections.HeldResult):
                done = f"{r.connections:,} held, {r.memory_per_connection / 1024:.1f} KiB each"
            else:
                done = f"{r.connections:,} disconnecting, {r.cpu_seconds:.2f} s of CPU"
            print(f"connections {r.server}: {done}", flush=True)
            connection_results.append(connection_result)
        sections.append(report.connections_section(connection_results))
    if "chat" in only:
        chat_results = []
        async for chat_result in chat.run(
            ("SQLite", "PostgreSQL"), repeats=repeats, seconds=chat_seconds
        ):
            c = chat_result
            print(
                f"chat {c.backend}: room of {chat.HOT_SENDERS} {c.hot.acked_per_s:,.0f}/s, "
                f"{c.hot.cpu_us_per_ack:,.0f} µs/ack ({c.solo.cpu_us_per_ack:,.0f} alone); "
                f"open loop {chat.OPEN_RATE}/s p99 {_ms(c.open.latency.percentile(0.99))} ms, "
                f"{c.open.acked}/{c.open.sent} acked; room of {chat.LARGE_ROOM} "
                f"{c.large.delivered_per_s:,.0f} deliveries/s ({c.large_vs_fanout:.2f}x "
                f"burst, {c.large_vs_fanout_per_core:.2f}x per core; "
                f"{c.large_vs_relay:.2f}x relay, {c.large_vs_relay_per_core:.2f}x per core); "
                f"{chat.MANY_ROOMS} rooms {c.many.acked_per_s:,.0f}/s",
                flush=True,
            )
            chat_results.append(chat_result)
        baseline = await chat.baseline_room(repeats=repeats, seconds=chat_seconds)
        print(
            f"chat, {baseline.name}'s room of {chat.LARGE_ROOM}: relay "
            f"{baseline.relay_vs_fanout:.2f}x burst, "
            f"{baseline.relay_vs_fanout_per_core:.2f}x per core",
            flush=True,
        )
        sections.append(report.chat_section(chat_results, baseline))
    if "joins" in only:
        join_results = []
        join_variants: list[tuple[str, joining.TargetFactory, bool | None]] = [
            ("roomserver", ours, False),
            ("roomserver, join with since_seq 0", ours, True),
            (
                "roomserver, GC_YOUNG_THRESHOLD=700",
                partial(ours, settings=PYTHON_GC_THRESHOLD),
                False,
            ),
            ("Node socket.io 4", node_baseline, None),
            (
                joining.NODE_WITH_BACKLOG,
                partial(node_baseline, backlog=joining.BACKLOG),
                None,
            ),
        ]
        async for join_result in joining.run(join_variants, users=join_users, repeats=repeats):
            print(
                f"joins {join_result.server}: {join_result.users:,} in "
                f"{join_result.wall_s:.2f} s, {join_result.cpu_us_per_join:,.0f} µs of "
                "server CPU each",
                flush=True,
            )
            join_results.append(join_result)
        sections.append(report.joins_section(join_results))
    if "documents" in only:
        document_results = []
        async for document_result in documents.run(
            [yjs_ours, yjs_python_baseline, yjs_node_baseline],
            rates=yjs_rates,
            repeats=repeats,
            seconds=yjs_seconds,
            join_bytes=join_bytes,
            joins=joins,
        ):
            typing = ", ".join(
                f"{rate}/s p50 {_ms(rr.p50_ms)} ms" for rate, rr in document_result.rates.items()
            )
            plain = document_result.uncompressed
            if plain is not None:
                typing += f", {plain.rate}/s without deflate p50 {_ms(plain.p50_ms)} ms"
            join = document_result.join
            joined = f"; join {_ms(join.median('synced_ms'))} ms" if join else ""
            if join and join.cold_runs:
                joined += f", from disk {_ms(join.median('synced_ms', cold=True))} ms"
            print(f"yjs {document_result.server}: {typing}{joined}", flush=True)
            document_results.append(document_result)
        sections.append(report.documents_section(document_results, yjs_rates, plots))
    if "assistant" in only:
        assistant_results = []
        async for assistant_result in assistant.run(repeats=repeats):
            latency = assistant_result.latency
            probe = assistant_result.probe_busy
            print(
                f"assistant, chunking {assistant_result.chunking}: "
                f"{assistant_result.completed}/{assistant_result.asked} completed, token p50 "
                f"{_ms(latency.percentile(0.5))} p99 {_ms(latency.percentile(0.99))} ms; "
                f"chat ack p50 {_ms(assistant_result.probe_idle.percentile(0.5))} ms alone, "
                f"{_ms(probe.percentile(0.5))} ms during",
                flush=True,
            )
            assistant_results.append(assistant_result)
        sections.append(report.assistant_section(assistant_results, plots))
    if "cluster" in only:
        cluster_results = []
        async for spread in cluster.run(cluster_sizes, repeats=repeats, rates=rates):
            at_rate = spread.latency.get(rates[0]) if rates else None
            p99 = at_rate.percentile(0.99) if at_rate is not None else None
            commands = spread.median("commands_per_broadcast") or 0
            print(
                f"cluster {spread.variant} N={spread.size}: {spread.delivered_per_s:,.0f}/s, "
                f"p99 at {rates[0] if rates else '-'}/s {_ms(p99)} ms, "
                f"{commands:.2f} Redis commands a broadcast",
                flush=True,
            )
            cluster_results.append(spread)
        sections.append(report.cluster_section(cluster_results, rates))
    if "knowledge" in only:
        found = await knowledge.run(repeats=repeats)
        user = found.search["user"]
        print(
            f"knowledge: {found.chunks:,} passages indexed in {found.index_s:.1f} s "
            f"({found.per_s:,.0f}/s); search as a user p50 {_ms(user.percentile(0.5))} "
            f"p99 {_ms(user.percentile(0.99))} ms",
            flush=True,
        )
        sections.append(report.knowledge_section(found))
    return sections


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
