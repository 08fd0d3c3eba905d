"""The many-connections section: 10,000 held, a disconnect storm, against Node."""

from __future__ import annotations

from bench.report.common import times
from bench.scenarios.connections import HeldResult, StormResult

NODE = "Node socket.io 4"


def connections_section(results: list[HeldResult | StormResult]) -> str:
    held = [r for r in results if isinstance(r, HeldResult)]
    storms = [r for r in results if isinstance(r, StormResult)]
    node_held = next((r for r in held if r.server == NODE), None)
    node_storm = next((r for r in storms if r.server == NODE), None)
    lines = [
        "## Many connections",
        "",
        "*Held*: websocket clients (socket.io-client 4, offering permessage-deflate as "
        "browsers do) connect and join one room, then idle for the hold while Engine.IO "
        "heartbeats run (every 25 s on each server). *Server CPU per connect+join*: the "
        "server's CPU time while they connected, per connection. *Memory/conn*: the "
        "server's RSS "
        "growth per connection once all are in; *growth*: how RSS moved per connection "
        "during the hold; *CPU*: the server's share of one core over the hold. *Storm*: "
        "as many clients connected and joined, then all disconnect at once; the server's "
        "CPU time from the first close until it is idle again. The roomserver variants "
        "differ from its defaults by one setting each.",
        "",
        "| server | held | connect+join (s) | vs Node | server CPU per connect+join (µs) "
        "| vs Node | memory/conn (KiB) | vs Node | CPU over the hold | growth (KiB/conn) "
        "| dropped |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in held:
        node_memory = node_held.memory_per_connection if node_held else None
        node_cpu = node_held.connect_cpu_per_connection if node_held else None
        lines.append(
            f"| {r.server} | {r.connections:,} | {r.connect_s:.1f} "
            f"| {times(r.connect_s, node_held.connect_s if node_held else None)} "
            f"| {r.connect_cpu_per_connection * 1e6:.0f} "
            f"| {times(r.connect_cpu_per_connection, node_cpu)} "
            f"| {r.memory_per_connection / 1024:.1f} "
            f"| {times(r.memory_per_connection, node_memory)} "
            f"| {r.cpu_share:.1%} | {r.growth_per_connection / 1024:+.2f} | {r.dropped} |"
        )
    lines += [
        "",
        "| server | disconnecting at once | server CPU (s) | per connection (µs) | vs Node "
        "| until idle (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for storm in storms:
        lines.append(
            f"| {storm.server} | {storm.connections:,} | {storm.cpu_seconds:.2f} "
            f"| {storm.cpu_seconds / storm.connections * 1e6:.0f} "
            f"| {times(storm.cpu_seconds, node_storm.cpu_seconds if node_storm else None)} "
            f"| {storm.seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"
