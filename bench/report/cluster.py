"""The cross-node fan-out section: three nodes through Redis against one node."""

from __future__ import annotations

from bench.report.common import ms
from bench.scenarios.cluster import CLUSTER, NODES, SINGLE, ClusterResult


def _latency(result: ClusterResult, rate: int) -> str:
    histogram = result.latency.get(rate)
    if histogram is None:
        return f"over capacity (needs {rate * result.size:,}/s)"
    return f"{ms(histogram.percentile(0.5))} / {ms(histogram.percentile(0.99))}"


def _per_broadcast(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _p99_ratio(result: ClusterResult, single: ClusterResult | None, rate: int) -> str:
    if single is None:
        return "-"
    mine, theirs = result.latency.get(rate), single.latency.get(rate)
    if mine is None or theirs is None:
        return "-"
    a, b = mine.percentile(0.99), theirs.percentile(0.99)
    return f"{a / b:.2f}x" if a is not None and b else "-"


def cluster_section(results: list[ClusterResult], rates: tuple[int, ...]) -> str:
    by_key = {(r.variant, r.size): r for r in results}
    lines = [
        "## Cross-node fan-out",
        "",
        f"One sender on one node, N receivers in its room spread evenly over {NODES} "
        "`python -m app` processes that share one PostgreSQL database and one Redis "
        "(`REDIS_URL`: room events cross nodes by pub/sub, realtime/cluster/), against "
        "the same room on a single node without Redis, in the same run. The relay and "
        "the columns are the room fan-out's (receivers: bench/node/wire.mjs); every "
        "server process and Redis are pinned to core 0 together, so *server CPU* adds "
        "them all up. *Redis commands per broadcast* come from Redis' `INFO "
        "commandstats` over each burst: `PUBLISH`es, then every command (the nodes' "
        "health `PING`s included).",
        "",
        "| N | variant | delivered/s | vs one node | "
        + " | ".join(f"p50 / p99 at {rate}/s (ms)" for rate in rates)
        + f" | p99 vs one node ({' / '.join(f'{rate}/s' for rate in rates)}) "
        "| server CPU | load CPU | PUBLISH per broadcast | Redis commands per broadcast |",
        "| --- " * (9 + len(rates)) + "|",
    ]
    for size in sorted({r.size for r in results}):
        single = by_key.get((SINGLE, size))
        for variant in (SINGLE, CLUSTER):
            r = by_key.get((variant, size))
            if r is None:
                continue
            speed = "" if single is None else f"{r.delivered_per_s / single.delivered_per_s:.2f}x"
            p99_ratio = " / ".join(_p99_ratio(r, single, rate) for rate in rates)
            delivered = f"{r.delivered_per_s:,.0f}" + ("" if r.complete else " (incomplete)")
            lines.append(
                f"| {size:,} | {variant} | {delivered} | {speed} | "
                + " | ".join(_latency(r, rate) for rate in rates)
                + f" | {p99_ratio} | {r.median('server_cpu') or 0:.0%} "
                f"| {r.median('load_cpu') or 0:.0%} "
                f"| {_per_broadcast(r.median('publishes_per_broadcast'))} "
                f"| {_per_broadcast(r.median('commands_per_broadcast'))} |"
            )
    return "\n".join(lines) + "\n"
