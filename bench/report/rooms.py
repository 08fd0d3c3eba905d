"""The room fan-out section, against the baselines (chat with persistence: chat.py)."""

from __future__ import annotations

from pathlib import Path

from bench.report.common import ms, plot_cdf, plt, ratio
from bench.scenarios.fanout import FanoutResult

BASELINES = ("plain python-socketio", "Node socket.io 4")


def _latency_cell(result: FanoutResult, rate: int) -> str:
    histogram = result.latency[rate]
    if histogram is None:
        return f"over capacity (needs {rate * result.size:,}/s)"
    return f"{ms(histogram.percentile(0.5))} / {ms(histogram.percentile(0.99))}"


def fanout_section(results: list[FanoutResult], rates: tuple[int, ...], plots: Path) -> str:
    by_key = {(r.server, r.size): r for r in results}
    sizes = sorted({r.size for r in results})
    servers = list(dict.fromkeys(r.server for r in results))
    lines = [
        "## Room fan-out",
        "",
        "One sender, N receivers in one room, ~100-byte messages. *Delivered/s*: the sender "
        "sends as fast as it can and every receiver counts (median of the repeats, from the "
        "first send to the last receipt). *p50/p99*: end-to-end latency over every delivery "
        "at a fixed send rate; *over capacity* when that rate times N exceeds the server's "
        "measured maximum, where latency is only the length of a growing queue. "
        "*Memory*: growth of the server's RSS per connection (a negative value: the "
        "runtime's heap shrank while connecting, i.e. the cost is below the noise). "
        "*CPU*: share of one core during the bursts (server on core 0, load on core 1).",
        "",
    ]
    for size in sizes:
        lines += [
            f"### N = {size:,}",
            "",
            "| server | delivered/s | vs python-socketio | vs Node | "
            + " | ".join(f"p50 / p99 at {rate}/s (ms)" for rate in rates)
            + " | connect+join all (s) | join p50 / p99 (ms) | memory/conn (KiB) "
            "| server CPU | load CPU |",
            "| --- " * (9 + len(rates)) + "|",
        ]
        python_base = by_key.get((BASELINES[0], size))
        node_base = by_key.get((BASELINES[1], size))
        for server in servers:
            r = by_key.get((server, size))
            if r is None:
                continue
            latency = " | ".join(_latency_cell(r, rate) for rate in rates)
            flag = "" if r.complete else " (incomplete)"
            vs_python = ratio(
                r.delivered_per_s, python_base.delivered_per_s if python_base else None
            )
            vs_node = ratio(r.delivered_per_s, node_base.delivered_per_s if node_base else None)
            lines.append(
                f"| {server} | {r.delivered_per_s:,.0f}{flag} | {vs_python} | {vs_node} "
                f"| {latency} | {r.connect_s:.2f} | {ms(r.join_p50_ms)} / {ms(r.join_p99_ms)} "
                f"| {r.memory_per_connection / 1024:.1f} | {r.server_cpu:.0%} | {r.load_cpu:.0%} |"
            )
        lines.append("")
    lines += _fanout_plots(results, servers, sizes, rates, plots)
    return "\n".join(lines)


def _fanout_plots(
    results: list[FanoutResult],
    servers: list[str],
    sizes: list[int],
    rates: tuple[int, ...],
    plots: Path,
) -> list[str]:
    figure, axis = plt.subplots(figsize=(7, 4))
    for server in servers:
        points = [(r.size, r.delivered_per_s) for r in results if r.server == server]
        axis.plot(*zip(*points, strict=True), marker="o", label=server)
    axis.set_xscale("log")
    axis.set_xlabel("receivers in the room")
    axis.set_ylabel("delivered messages / s")
    axis.set_title("Fan-out throughput vs room size")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(plots / "fanout-throughput.png", dpi=110)
    plt.close(figure)

    # The smallest room at the highest rate: every server is within capacity there.
    size, rate = sizes[0], rates[-1]
    figure, axis = plt.subplots(figsize=(7, 4))
    for r in results:
        histogram = r.latency[rate]
        if r.size != size or histogram is None:
            continue
        plot_cdf(axis, histogram, r.server)
    axis.set_xscale("log")
    axis.set_xlabel("end-to-end latency (ms)")
    axis.set_ylabel("share of deliveries")
    axis.set_title(f"Latency distribution, N = {size:,}, {rate} msg/s")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(plots / "fanout-latency.png", dpi=110)
    plt.close(figure)
    return [
        f"![throughput vs room size]({plots.name}/fanout-throughput.png)",
        "",
        f"![latency distribution]({plots.name}/fanout-latency.png)",
        "",
    ]
