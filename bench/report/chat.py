"""The chat section (issue 12, hot rooms): one table per question, the issue's goal
beside each figure, ratios against the same run's baseline."""

from __future__ import annotations

from bench.harness import Histogram
from bench.report.common import ms, ratio
from bench.scenarios.chat import (
    HOT_SENDERS,
    LARGE_ROOM,
    MANY_ROOMS,
    MANY_SIZES,
    OPEN_RATE,
    SHORT_LINGER,
    BaselineRoom,
    ChatResult,
    ClosedLoop,
)

OPEN_P99_GOAL_MS = 50.0
LARGE_VS_FANOUT_GOAL = 0.8
MANY_GOAL_PER_S = 10_000
MANY_GOAL_BACKEND = "PostgreSQL"
# A load generator this busy may be what limited a run (the machine has two cores).
GENERATOR_BOUND = 0.9


def _pair(histogram: Histogram) -> str:
    return f"{ms(histogram.percentile(0.5))} / {ms(histogram.percentile(0.99))}"


def _met(ok: bool) -> str:
    return "**yes**" if ok else "**no**"


def _load(share: float) -> str:
    return f"{share:.0%}" + (" (bound?)" if share >= GENERATOR_BOUND else "")


def _versus(rate: float, per_core: float, bound: bool) -> tuple[str, str]:
    """A large-room comparison: its ratios and whether they meet the goal.

    The rates compare what the clients received; where the generator was the limit on
    either side (``bound``) they say more about the generator than the server, and only
    the deliveries per second of server CPU (*per core*) can decide. Otherwise both
    must reach the goal."""
    shown = f"{rate:.2f}x" + (" (bound?)" if bound else "") + f", per core {per_core:.2f}x"
    met = per_core >= LARGE_VS_FANOUT_GOAL and (bound or rate >= LARGE_VS_FANOUT_GOAL)
    return shown, _met(met)


def _vs_fanout(r: ChatResult) -> tuple[str, str]:
    bound = max(r.large.load_share, r.fanout.load_cpu) >= GENERATOR_BOUND
    return _versus(r.large_vs_fanout, r.large_vs_fanout_per_core, bound)


def _vs_relay(r: ChatResult) -> tuple[str, str]:
    bound = max(r.large.load_share, r.relay.load_share) >= GENERATOR_BOUND
    return _versus(r.large_vs_relay, r.large_vs_relay_per_core, bound)


def _failed(loop: ClosedLoop) -> str:
    return f"{loop.failed} ({loop.first_error})" if loop.failed else "0"


def chat_section(results: list[ChatResult], baseline: BaselineRoom) -> str:
    sizes = ", ".join(str(size) for size in MANY_SIZES)
    lines = [
        "## Chat with persistence",
        "",
        "roomserver's chat (the baselines store nothing: Node's socket.io appears once, "
        f"for scale, in the room of {LARGE_ROOM}); issue 12, hot rooms. On each "
        "database one server, its users made beside it through the app's own code "
        "(bench/seed_users.py), each room a document of its own with its members added "
        "over REST. Every connection is a member of one room and counts the "
        "`chat:message` events it receives (a message's text carries its send time, so "
        "each delivery is timed too). A *closed loop* sender sends `chat:send`, waits for "
        "the ack (the message committed with its `seq`) and sends again; *acked/s* runs "
        "from the first send to the last ack. *Server CPU*: roomserver's share of one core "
        "(pinned to core 0), and its CPU time per acknowledged message; PostgreSQL's own "
        "processes are not in it (they are not pinned: they share both cores). The "
        "clients are bench/node/wire.mjs's minimal Socket.IO client (the same handshake, "
        "packets and bytes as socket.io-client, which in a room of 100 saturates the load "
        "core before the server's); *load CPU* is the generator's share of core 1, "
        f"*bound?* from {GENERATOR_BOUND:.0%} on, where the generator may be what limited "
        "the run. *Others' CPU*: what every other process on the machine used meanwhile, "
        "as a share of one core: on PostgreSQL the database's work, and on both anything "
        "else running (the machine is shared; its two cores are all there is). "
        "Figures are medians of the repeats; latencies are over every repeat's acks.",
        "",
    ]
    lines += _goals(results)
    lines += [
        f"For scale, the same comparison for {baseline.name}'s plain relay in its own room "
        f"of {LARGE_ROOM}, which stores and checks nothing: "
        f"{baseline.relay_vs_fanout:.2f}x its burst"
        + (" (bound?)" if _baseline_bound(baseline) else "")
        + f", per core {baseline.relay_vs_fanout_per_core:.2f}x; it made "
        f"{baseline.relay.delivered_per_core:,.0f} deliveries per second of its CPU, "
        "roomserver's chat in its room of the same size "
        + ", ".join(f"{r.large.delivered_per_core:,.0f} on {r.backend}" for r in results)
        + f" (the room of {LARGE_ROOM} section).",
        "",
    ]
    lines += [
        f"### One room of {HOT_SENDERS} senders, closed loop",
        "",
        f"Each of the {HOT_SENDERS} connections sends and listens: every acknowledged "
        f"message should reach the {HOT_SENDERS - 1} others (*received per ack*). The "
        f"rows *CHAT_BATCH_LINGER_SECONDS={SHORT_LINGER}*: the same room on a second "
        "server (and a database of its own) whose batches wait at most that long for the "
        "senders of the batch before (the default until it became 0.003 s), its repeats "
        "taking turns with the default's so that the machine's slow spells hit both.",
        "",
        "| database | acked/s | ack p50 / p99 (ms) | server CPU | server CPU per ack (µs) "
        "| chat:message received/s | received per ack | delivery p50 / p99 (ms) | failed "
        "| load CPU | others' CPU |",
        "| --- " * 11 + "|",
    ]
    for r in results:
        short_row = (f"{r.backend}, CHAT_BATCH_LINGER_SECONDS={SHORT_LINGER}", r.hot_short_linger)
        for name, h in [(r.backend, r.hot), short_row]:
            lines.append(
                f"| {name} | {h.acked_per_s:,.0f} | {_pair(h.latency)} | {h.cpu_share:.0%} "
                f"| {h.cpu_us_per_ack:,.0f} | {h.delivered_per_s:,.0f} "
                f"| {h.deliveries_per_ack:.2f} of {HOT_SENDERS - 1} | {_pair(h.delivery)} "
                f"| {_failed(h)} | {_load(h.load_share)} | {h.others_share:.0%} |"
            )
    pairs = "; ".join(
        f"{r.backend} "
        + ", ".join(
            f"{default / short:.2f}x"
            for default, short in zip(r.hot.rates, r.hot_short_linger.rates, strict=True)
        )
        for r in results
    )
    lines += [
        "",
        f"Each repeat's acked/s at the default over the same repeat's at {SHORT_LINGER} s "
        f"(they took turns): {pairs}.",
        "",
        f"### The same room, open loop at {OPEN_RATE:,} messages/s",
        "",
        f"{OPEN_RATE:,} `chat:send`/s in all on a fixed schedule, message n from sender "
        f"n mod {HOT_SENDERS}, none waiting for its previous ack (one connection's sends "
        "keep their order). Latency runs from the time a send was due, so a generator "
        "that fell behind counts against the server, never for it (*generator late*: the "
        f"most it fell behind). Goal (issue 12): ack p99 < {OPEN_P99_GOAL_MS:.0f} ms, "
        "every send acked.",
        "",
        "| database | sent | acked | failed | ack p50 / p99 (ms) | p99 of each repeat (ms) "
        f"| p99 < {OPEN_P99_GOAL_MS:.0f} ms | all acked | server CPU | generator late (ms) "
        "| others' CPU |",
        "| --- " * 11 + "|",
    ]
    for r in results:
        o = r.open
        p99 = o.latency.percentile(0.99)
        failed = f"{o.failed} ({o.first_error})" if o.failed else "0"
        lines.append(
            f"| {r.backend} | {o.sent:,} | {o.acked:,} | {failed} | {_pair(o.latency)} "
            f"| {', '.join(ms(value) for value in o.p99s)} "
            f"| {_met(p99 is not None and p99 < OPEN_P99_GOAL_MS)} | {_met(o.all_acked)} "
            f"| {o.cpu_share:.0%} | {ms(o.max_late_ms)} | {o.others_share:.0%} |"
        )
    lines += [
        "",
        "### Server CPU per acknowledged message, fan-out aside",
        "",
        f"The same load with no fan-out: {HOT_SENDERS} rooms of one sender each, closed "
        f"loop. *Room of {HOT_SENDERS} vs alone*: the hot room's CPU per ack (above) over "
        "this one's, the cost of its fan-out and of its senders sharing one ordered room.",
        "",
        f"| database | acked/s alone | ack p50 / p99 alone (ms) | server CPU alone "
        f"| CPU per ack alone (µs) | CPU per ack, room of {HOT_SENDERS} (µs) "
        f"| room of {HOT_SENDERS} vs alone | failed | others' CPU alone |",
        "| --- " * 9 + "|",
    ]
    for r in results:
        s, h = r.solo, r.hot
        lines.append(
            f"| {r.backend} | {s.acked_per_s:,.0f} | {_pair(s.latency)} | {s.cpu_share:.0%} "
            f"| {s.cpu_us_per_ack:,.0f} | {h.cpu_us_per_ack:,.0f} "
            f"| {ratio(h.cpu_us_per_ack, s.cpu_us_per_ack)} | {_failed(s)} "
            f"| {s.others_share:.0%} |"
        )
    lines += [
        "",
        f"### One room of {LARGE_ROOM} senders against plain fan-out",
        "",
        f"All {LARGE_ROOM} members send, closed loop, and receive. Goal (issue 12): chat "
        f"deliveries ≥ {LARGE_VS_FANOUT_GOAL} x the same run's plain fan-out rate for a "
        "room of that size, what storing and ordering cost on top of delivery. Two plain "
        "fan-outs of the same server into the same room: *burst*, as the fan-out section "
        f"measures it (one more connection blasting `presence:update` at the {LARGE_ROOM} "
        "members as fast as it can; its CPU shares are over its bursts), and *relay*, "
        f"the same {LARGE_ROOM} members in the same closed loop sending `presence:update` "
        "(the plain relay) instead of `chat:send`, its repeats taking turns with chat's: "
        "the traffic of the chat run without the storing and the ordering. The rates "
        "compare what the clients received. A load generator near 100% of its core "
        "(*bound?*) may be what set a rate; the server's own measure is then *per core*: "
        "deliveries per second of the server's CPU, the rate it would reach as the limit. "
        "A comparison meets the goal when its per-core ratio does, and its rate ratio "
        "too unless a generator was bound.",
        "",
        "| database | acked/s | ack p50 / p99 (ms) | chat:message received/s "
        "| received per ack | delivery p50 / p99 (ms) | server CPU | per core "
        "| load CPU | others' CPU |",
        "| --- " * 10 + "|",
    ]
    for r in results:
        g = r.large
        lines.append(
            f"| {r.backend} | {g.acked_per_s:,.0f} | {_pair(g.latency)} "
            f"| {g.delivered_per_s:,.0f} | {g.deliveries_per_ack:.2f} of {LARGE_ROOM - 1} "
            f"| {_pair(g.delivery)} | {g.cpu_share:.0%} | {g.delivered_per_core:,.0f} "
            f"| {_load(g.load_share)} | {g.others_share:.0%} |"
        )
    lines += [
        "",
        "| database | plain fan-out | delivered/s | received per send "
        "| delivery p50 / p99 (ms) | server CPU | per core | load CPU | chat vs it "
        f"| ≥ {LARGE_VS_FANOUT_GOAL} |",
        "| --- " * 10 + "|",
    ]
    for r in results:
        f, y = r.fanout, r.relay
        versus, met = _vs_fanout(r)
        flag = "" if f.complete else " (incomplete)"
        lines.append(
            f"| {r.backend} | burst | {f.delivered_per_s:,.0f}{flag} | - | - "
            f"| {f.server_cpu:.0%} | {f.delivered_per_core:,.0f} | {_load(f.load_cpu)} "
            f"| {versus} | {met} |"
        )
        versus, met = _vs_relay(r)
        failed = f" ({y.failed} failed: {y.first_error})" if y.failed else ""
        lines.append(
            f"| {r.backend} | relay | {y.delivered_per_s:,.0f}{failed} "
            f"| {y.deliveries_per_ack:.2f} of {LARGE_ROOM - 1} | {_pair(y.delivery)} "
            f"| {y.cpu_share:.0%} | {y.delivered_per_core:,.0f} | {_load(y.load_share)} "
            f"| {versus} | {met} |"
        )
    lines += [
        "",
        f"Where the server's CPU per message goes in the room of {LARGE_ROOM}: its "
        f"{LARGE_ROOM - 1} deliveries at what the burst paid for as many (its CPU per "
        "delivery, the same server and room), and *the rest*: what the message costs "
        "beyond its deliveries. The burst's sender sends without acks and the server reads "
        "tens of its messages in one system call; a closed-loop sender's message is a "
        "read of its own, a parse, an ack, and for chat a place in a batch and a row. "
        "*Alone*: the CPU per message with no fan-out at all (the table above). A per-core "
        f"ratio of {LARGE_VS_FANOUT_GOAL} against the burst allows the rest "
        f"{1 / LARGE_VS_FANOUT_GOAL - 1:.2f} x the deliveries' cost (*allowed*).",
        "",
        "| database | CPU per message (µs) | its deliveries at the burst's cost (µs) "
        "| the rest: chat (µs) | the rest: relay (µs) | alone, no fan-out (µs) "
        f"| allowed for {LARGE_VS_FANOUT_GOAL} x the burst per core (µs) |",
        "| --- " * 7 + "|",
    ]
    for r in results:
        g, f, y = r.large, r.fanout, r.relay
        deliveries = (LARGE_ROOM - 1) * 1e6 / f.delivered_per_core
        lines.append(
            f"| {r.backend} | {g.cpu_us_per_ack:,.0f} | {deliveries:,.0f} "
            f"| {g.cpu_us_per_ack - deliveries:,.0f} | {y.cpu_us_per_ack - deliveries:,.0f} "
            f"| {r.solo.cpu_us_per_ack:,.0f} "
            f"| {deliveries * (1 / LARGE_VS_FANOUT_GOAL - 1):,.0f} |"
        )
    lines += _plain_relays(results, baseline)
    lines += [
        "",
        f"### {MANY_ROOMS} rooms of {sizes} people at once",
        "",
        f"Room sizes cycle {sizes}; every person sends, closed loop, and receives. "
        f"Goal (issue 12): ≥ {MANY_GOAL_PER_S:,} acknowledged messages/s on "
        f"{MANY_GOAL_BACKEND}.",
        "",
        "| database | people | acked/s | of the goal | goal met | ack p50 / p99 (ms) "
        "| server CPU | server CPU per ack (µs) | chat:message received/s | failed "
        "| load CPU | others' CPU |",
        "| --- " * 12 + "|",
    ]
    for r in results:
        m = r.many
        met = _met(m.acked_per_s >= MANY_GOAL_PER_S) if r.backend == MANY_GOAL_BACKEND else "-"
        lines.append(
            f"| {r.backend} | {m.senders} | {m.acked_per_s:,.0f} "
            f"| {m.acked_per_s / MANY_GOAL_PER_S:.0%} | {met} | {_pair(m.latency)} "
            f"| {m.cpu_share:.0%} | {m.cpu_us_per_ack:,.0f} | {m.delivered_per_s:,.0f} "
            f"| {_failed(m)} | {_load(m.load_share)} | {m.others_share:.0%} |"
        )
    return "\n".join(lines) + "\n"


def _baseline_bound(baseline: BaselineRoom) -> bool:
    return max(baseline.relay.load_share, baseline.fanout.load_cpu) >= GENERATOR_BOUND


def _plain_relays(results: list[ChatResult], baseline: BaselineRoom) -> list[str]:
    """The large room's comparison with nothing stored: each server's plain relay in
    the members' closed loop against its own burst, the baseline's among them."""
    lines = [
        "",
        "The comparison with nothing stored at all: each server's plain relay in the "
        f"members' closed loop (above, *relay*) against its own burst, and the baseline "
        f"measured the same two ways in the same run: {baseline.name} "
        "(bench/node/server.mjs, which stores and checks nothing), its room of "
        f"{LARGE_ROOM} wire.mjs members receiving one more connection's burst of "
        "`broadcast`, then themselves sending acknowledged `broadcast`s in the same "
        "closed loop (each send the bare stamp, as the burst's).",
        "",
        "| server | burst: per core | burst: CPU per delivery (µs) | relay: delivered/s "
        "| relay: per core | relay: CPU per message (µs) | load CPU, burst / relay "
        f"| relay vs burst | ≥ {LARGE_VS_FANOUT_GOAL} |",
        "| --- " * 9 + "|",
    ]
    rows = [(f"{baseline.name} (stores nothing)", baseline.fanout, baseline.relay)]
    rows += [(f"roomserver, {r.backend}", r.fanout, r.relay) for r in results]
    for name, burst, relay in rows:
        bound = max(relay.load_share, burst.load_cpu) >= GENERATOR_BOUND
        versus, met = _versus(
            relay.delivered_per_s / burst.delivered_per_s,
            relay.delivered_per_core / burst.delivered_per_core,
            bound,
        )
        lines.append(
            f"| {name} | {burst.delivered_per_core:,.0f} "
            f"| {1e6 / burst.delivered_per_core:.2f} | {relay.delivered_per_s:,.0f} "
            f"| {relay.delivered_per_core:,.0f} | {relay.cpu_us_per_ack:,.0f} "
            f"| {burst.load_cpu:.0%} / {relay.load_share:.0%} | {versus} | {met} |"
        )
    return lines


def _goals(results: list[ChatResult]) -> list[str]:
    """The issue's goals at a glance, each measured in a table below."""
    backends = [r.backend for r in results]
    rows = []
    cells = []
    for r in results:
        p99 = r.open.latency.percentile(0.99)
        ok = p99 is not None and p99 < OPEN_P99_GOAL_MS and r.open.all_acked
        cells.append(f"{ms(p99)} ms, {r.open.acked:,} of {r.open.sent:,} acked: {_met(ok)}")
    rows.append(
        f"| open loop at {OPEN_RATE:,}/s into a room of {HOT_SENDERS}: ack p99 "
        f"< {OPEN_P99_GOAL_MS:.0f} ms, all acked | " + " | ".join(cells) + " |"
    )
    rows.append(
        f"| room of {LARGE_ROOM} senders: chat deliveries/s ≥ {LARGE_VS_FANOUT_GOAL} x "
        "plain fan-out, as one sender's burst | "
        + " | ".join(": ".join(_vs_fanout(r)) for r in results)
        + " |"
    )
    rows.append(
        f"| the same, as the same {LARGE_ROOM} senders relaying | "
        + " | ".join(": ".join(_vs_relay(r)) for r in results)
        + " |"
    )
    rows.append(
        f"| {MANY_ROOMS} rooms of 2-5 people: ≥ {MANY_GOAL_PER_S:,} acked/s on "
        f"{MANY_GOAL_BACKEND} | "
        + " | ".join(
            f"{r.many.acked_per_s:,.0f}/s"
            + (
                f": {_met(r.many.acked_per_s >= MANY_GOAL_PER_S)}"
                if r.backend == MANY_GOAL_BACKEND
                else ""
            )
            for r in results
        )
        + " |"
    )
    return [
        "| goal (issue 12) | " + " | ".join(backends) + " |",
        "| --- " * (1 + len(backends)) + "|",
        *rows,
        "",
    ]
