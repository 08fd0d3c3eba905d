"""The joins section (issue 12): many distinct users joining one room, against Node."""

from __future__ import annotations

import statistics

from bench.report.common import ms, times
from bench.scenarios.joins import BACKLOG, CONCURRENCY, NODE_WITH_BACKLOG, WORKERS, JoinResult

NODE = "Node socket.io 4"


def joins_section(results: list[JoinResult]) -> str:
    plain = next((r for r in results if r.server == NODE), None)
    # Joins with catch-up against Node's joins that bring as many messages.
    with_backlog = next((r for r in results if r.server == NODE_WITH_BACKLOG), plain)
    users = max((r.users for r in results), default=0)
    lines = [
        "## Joins",
        "",
        f"{users:,} distinct users connect (websocket) and join one room, {WORKERS} load "
        f"generators {CONCURRENCY} at a time each; a fresh server for every run. "
        "roomserver tells the room when a user's first connection joins, so each join "
        "costs it a delivery to everyone already there (issue 12 measured 65 s for this "
        "against Node's 1 s); the Node baseline's join tells nobody. roomserver's users "
        "are made beside it through the app's own code (bench/seed_users.py: Argon2id "
        "registration and sign-in would cost minutes of the server's core first) and "
        f"added to the document over REST; the room holds {BACKLOG} messages first, and "
        f"the *since_seq* variant's joins carry `since_seq: 0`, so each ack brings them "
        "(one catch-up page); *vs Node* compares them with Node's joins whose acks "
        f"carry {BACKLOG} messages in the same shape (the last Node row: the clients "
        "parse as much). The runs take turns, one of each server, then the next "
        "round. *Connect+join*: from the first connect to the last join "
        "ack. *Server CPU per join*: its CPU time from the first connect until it was "
        "idle again (the presence events still queued after the last ack are the joins' "
        "cost too), and until the last ack. *Presence events*: `presence:joined` (or "
        "`presence:changed`, their batched form: one per room every "
        "`PRESENCE_BATCH_SECONDS`, 0.05 s, times the room's users over "
        "`PRESENCE_PAGE_SIZE`, up to 1 s) the clients received. *Users listed in "
        "the join acks*: their `presence` entries, summed; since issue 12 a join ack lists "
        "the first `PRESENCE_PAGE_SIZE` (100) users of a larger room and the rest is paged "
        "with `presence:list`, which these clients, like any that shows only the first "
        "users, do not ask for (the events still tell each of them every arrival). "
        "*Load CPU*: the "
        f"{WORKERS} generators' share of core 1 until the last ack; *others' CPU*: what "
        "every other process on the machine used meanwhile (a shared machine). Medians of "
        "the runs.",
        "",
        "| server | users | connect+join (s) | vs Node | server CPU per join (µs) | vs Node "
        "| ...until the last ack (µs) | join p50 / p99 (ms) | presence events received "
        "| users listed in the join acks | messages in the join acks | load CPU "
        "| others' CPU |",
        "| --- " * 13 + "|",
    ]
    for r in results:
        node = with_backlog if r.catch_up or r.server == NODE_WITH_BACKLOG else plain
        lines.append(
            f"| {r.server} | {r.users:,} | {r.wall_s:.2f} "
            f"| {times(r.wall_s, node.wall_s if node else None)} "
            f"| {r.cpu_us_per_join:,.0f} "
            f"| {times(r.cpu_us_per_join, node.cpu_us_per_join if node else None)} "
            f"| {r.cpu_us_per_join_at_ack:,.0f} "
            f"| {ms(statistics.median(r.join_p50_ms))} / {ms(statistics.median(r.join_p99_ms))} "
            f"| {statistics.median(r.presence):,.0f} "
            f"| {statistics.median(r.listed):,.0f} "
            f"| {statistics.median(r.caught_up):,.0f} "
            f"| {statistics.median(r.load_cpu):.0%} | {statistics.median(r.others_cpu):.0%} |"
        )
    return "\n".join(lines) + "\n"
