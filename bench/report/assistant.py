"""The assistant section: replies streaming in many rooms, and another room meanwhile."""

from __future__ import annotations

from pathlib import Path

from bench.report.common import ms, plot_cdf, plt, times
from bench.scenarios import assistant
from bench.scenarios.assistant import AssistantResult
from bench.scenarios.documents import NOISY


def assistant_section(results: list[AssistantResult], plots: Path) -> str:
    a = assistant
    ideal = a.ASK_SPREAD_SECONDS + a.TOKENS / a.TOKEN_RATE
    repeats = max((len(r.runs) for r in results), default=0)
    lines = [
        "## Assistant replies",
        "",
        f"{a.ROOMS} rooms of {a.PER_ROOM} connections (the asker and two listeners, "
        f"{a.PER_ROOM} users; {a.USERS} users in all); every room asks once, the asks spread "
        f"over {a.ASK_SPREAD_SECONDS:.0f} s, so {a.ROOMS} replies stream at once. roomserver "
        "(on its SQLite default) talks to a stand-in for the Anthropic Messages API through "
        "the official SDK (`ANTHROPIC_BASE_URL`): bench/servers/anthropic_standin.py, its own "
        "process on the load generator's core (the real upstream is another machine), "
        f"streams each reply as {a.TOKENS} tokens at {a.TOKEN_RATE} tokens/s, each token the "
        "moment it was written upstream. The load generator (bench/node/aigen.mjs, every "
        "connection in one Node process on core 1) reads those moments back from each "
        "`ai:chunk`: *token latency* is, for every token at every client, its receipt minus "
        "its own upstream write, however the server batched it; *first chunk*: from the "
        "asker's `ai:ask` to its first `ai:chunk`; *completed*: replies whose `ai:done` "
        "(`completed`) reached all their clients with every token, in `seq` order; *run "
        f"length*: first ask to the last reply's end ({ideal:.0f} s if nothing waits); "
        "*deliveries/s*: `ai:chunk` events received per second by all clients; *CPU per "
        "token*: the server's CPU over the run (asks, prompts, storing the replies, the chat "
        "probe) per token streamed upstream. Latency percentiles over every token of "
        f"{repeats} runs; the other figures are medians of the runs. *other CPU*: the rest of "
        f"the machine, noise; a run during which it passed {NOISY:.0%} of a core was redone "
        f"(up to {a.NOISE_RETRIES} times). Rows: `AI_CHUNK_INTERVAL_SECONDS` 0.05 (the default:"
        " one chunk per reply every 50 ms at most) and 0 (no batching by time: one event per "
        "token).",
        "",
        "| chunking | completed | tokens received | token latency p50 / p99 / max (ms) "
        "| first chunk p50 / p99 (ms) | run length (s) | deliveries/s | tokens per chunk "
        "| server CPU | CPU per token (µs) | stand-in CPU | load CPU | other CPU | problems |",
        "| --- " * 14 + "|",
    ]
    for r in results:
        latency, first = r.latency, r.first_chunk
        problems = r.trouble or "none"
        if r.redone:
            problems += f"; {r.redone} redone for noise"
        lines.append(
            f"| {r.chunking} | {r.completed} of {r.asked} | {r.tokens:,} of {r.expected_tokens:,} "
            f"| {ms(latency.percentile(0.5))} / {ms(latency.percentile(0.99))} / "
            f"{ms(latency.high if latency.total else None)} "
            f"| {ms(first.percentile(0.5))} / {ms(first.percentile(0.99))} "
            f"| {r.median('elapsed'):.1f} | {r.median('chunks_per_s'):,.0f} "
            f"| {r.median('tokens_per_chunk'):.1f} | {r.median('server_cpu'):.0%} "
            f"| {r.median('cpu_per_token_us'):,.0f} | {r.median('upstream_cpu'):.0%} "
            f"| {r.median('load_cpu'):.0%} | {r.median('others_cpu'):.0%} | {problems} |"
        )
    lines += [
        "",
        "### Another room meanwhile",
        "",
        f"Event-loop health: {a.PROBE_ROOMS} other rooms (a sender and a listener each, "
        f"nobody asks there), `chat:send` with ack at {a.PROBE_RATE}/s in all, the rooms in "
        f"turn ({a.PROBE_RATE / a.PROBE_ROOMS:g}/s in each), on a fixed schedule (open loop: "
        "a slow ack does not delay the next send; a room's sends are ordered, so one waits "
        f"for the previous in its room), alone for {a.PROBE_SECONDS:.0f} s just before each "
        "run of replies (the "
        "baseline, same run, same server) and again during the replies, from the first ask "
        "to the last reply's end. Ack latency over every send of the runs; the sends during "
        "the replies also by the phase of the run they were sent in: *starting*, until "
        "every reply has streamed its first chunk (asks checked, prompts read from the "
        "database, upstream requests opened); *streaming*, until the first reply ends; "
        "*ending*, the rest (replies stored as chat messages, usage recorded). Each phase "
        "with its sends and its median length.",
        "",
        "| chunking | alone p50 / p99 (ms) | during p50 / p99 (ms) | vs alone p50 / p99 "
        "| starting p50 / p99 (ms) | streaming p50 / p99 (ms) | ending p50 / p99 (ms) "
        "| server CPU alone / during |",
        "| --- " * 8 + "|",
    ]
    for r in results:
        idle, busy = r.probe_idle, r.probe_busy
        phases = []
        for phase in a.PHASES:
            h = r.probe_phase(phase)
            phases.append(
                f"{ms(h.percentile(0.5))} / {ms(h.percentile(0.99))} "
                f"({h.total} sends, {r.phase_seconds(phase):.1f} s)"
            )
        lines.append(
            f"| {r.chunking} | {ms(idle.percentile(0.5))} / {ms(idle.percentile(0.99))} "
            f"({idle.total} sends) | {ms(busy.percentile(0.5))} / {ms(busy.percentile(0.99))} "
            f"({busy.total} sends) | {times(busy.percentile(0.5), idle.percentile(0.5))} / "
            f"{times(busy.percentile(0.99), idle.percentile(0.99))} | {' | '.join(phases)} "
            f"| {r.idle_median('server_cpu'):.0%} / {r.median('server_cpu'):.0%} |"
        )
    lines.append("")
    if results:
        lines += _assistant_reading(results, ideal)

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        if r.latency.total:
            plot_cdf(left, r.latency, f"chunking {r.chunking}")
        if r.probe_idle.total:
            plot_cdf(right, r.probe_idle, f"alone ({r.chunking} server)")
        if r.probe_busy.total:
            plot_cdf(right, r.probe_busy, f"during replies, chunking {r.chunking}")
    left.set_title(f"Token latency, {a.ROOMS} replies at {a.TOKEN_RATE} tokens/s")
    left.set_xlabel("upstream write to client receipt (ms)")
    left.set_ylabel("share of tokens")
    right.set_title("Chat ack latency in another room")
    right.set_xlabel("ack latency (ms)")
    right.set_ylabel("share of sends")
    for axis in (left, right):
        axis.set_xscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(plots / "assistant-latency.png", dpi=110)
    plt.close(figure)
    lines += [f"![assistant latency]({plots.name}/assistant-latency.png)", ""]
    return "\n".join(lines)


def _assistant_reading(results: list[AssistantResult], ideal: float) -> list[str]:
    """The paragraph that reads the tables: computed, so a rerun cannot contradict it."""
    a = assistant
    default, *others = results
    upstream = a.ROOMS * a.TOKEN_RATE
    latency = default.latency
    cpu = default.median("server_cpu")
    length = default.median("elapsed")
    kept_up = length <= ideal * 1.15 and cpu < 0.9
    text = (
        f"**Reading them.** {a.ROOMS} replies at {a.TOKEN_RATE} tokens/s are {upstream:,} "
        f"upstream tokens/s into one server process. With the default batching "
        f"{default.completed} of {default.asked} replies completed; tokens reached the "
        f"clients {ms(latency.percentile(0.5))} ms (p50) and {ms(latency.percentile(0.99))} "
        f"ms (p99) after they left the upstream, "
        f"{default.median('tokens_per_chunk'):.1f} tokens per `ai:chunk`. "
    )
    first = default.first_chunk
    if kept_up:
        text += (
            f"The server kept up: the runs took {length:.1f} s of the {ideal:.0f} s the "
            f"replies last, at {cpu:.0%} of its core. "
        )
    else:
        text += (
            f"The server did not keep up: the runs took {length:.1f} s where the replies "
            f"last {ideal:.0f} s (its core at {cpu:.0%} on average), some replies "
            f"starting late (from ask to first chunk {ms(first.percentile(0.5))} ms p50, "
            f"{ms(first.percentile(0.99))} ms p99). "
        )
    per_token = default.median("cpu_per_token_us")
    text += f"It spent {per_token:,.0f} µs of CPU per upstream token"
    if default.responder_us is not None:
        text += (
            f", of which the responder alone, the same {a.ROOMS} replies streamed through the "
            "SDK's request in a process that does nothing else, takes "
            f"{default.responder_us:,.0f} µs ({default.responder_us / per_token:.0%}): each "
            "token arrives as one HTTP read and one server-sent event, before any fan-out"
        )
    text += ". "
    idle, busy = default.probe_idle, default.probe_busy
    alone = idle.percentile(0.5)
    medians = {phase: default.probe_phase(phase).percentile(0.5) for phase in a.PHASES}
    text += (
        f"A chat in another room was acked in {ms(alone)} ms (p50) with no replies and "
        f"{ms(busy.percentile(0.5))} ms (p99 {ms(busy.percentile(0.99))} ms) during them "
        f"({times(busy.percentile(0.5), alone)}). By phase (p50): "
        + ", ".join(
            f"{phase} {ms(medians[phase])} ms ({times(medians[phase], alone)})"
            for phase in a.PHASES
        )
        + ". "
    )
    work = {
        "starting": "each reply is checked, its prompt read from the database and its "
        "upstream request built and sent",
        "streaming": "every reply's chunks are fanned out",
        "ending": "each reply is stored with its usage, one write transaction each",
    }
    worst = max(a.PHASES, key=lambda phase: medians[phase] or 0.0)
    if medians[worst] is not None:
        text += f"Acks wait longest while replies are {worst}, when {work[worst]}. "
    for other in others:
        text += (
            f"Without batching (`AI_CHUNK_INTERVAL_SECONDS` {other.interval}) the server sent "
            f"{times(other.median('chunks_per_s'), default.median('chunks_per_s'))} the events/s "
            f"({other.median('chunks_per_s'):,.0f} vs {default.median('chunks_per_s'):,.0f}) "
            f"at {other.median('cpu_per_token_us'):,.0f} µs of CPU per token "
            f"({times(other.median('cpu_per_token_us'), default.median('cpu_per_token_us'))}), "
            f"and tokens took {ms(other.latency.percentile(0.5))} / "
            f"{ms(other.latency.percentile(0.99))} ms (p50 / p99); the runs took "
            f"{other.median('elapsed'):.1f} s. That is what batching buys: fewer events for "
            "the same text, for up to one interval of added latency per token. "
        )
    noisy = [r.chunking for r in results if r.median("others_cpu") > NOISY]
    if noisy:
        text += (
            f"Careful: the rest of the machine used more than {NOISY:.0%} of a core during "
            f"the runs of {', '.join(noisy)}."
        )
    return [text.rstrip(), ""]
