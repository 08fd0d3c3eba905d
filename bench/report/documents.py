"""The Yjs documents section: typing among editors, and joining a large document."""

from __future__ import annotations

from pathlib import Path

from bench.report.common import ms, plot_cdf, plt, times
from bench.scenarios.documents import (
    EDITORS,
    NOISY,
    NOISY_RETRIES,
    NOISY_WAIT_SECONDS,
    TYPISTS,
    DocumentsResult,
    RateResult,
)
from bench.targets import YJS_BASELINES, YJS_UNLOAD_AFTER_SECONDS


def documents_section(results: list[DocumentsResult], rates: tuple[int, ...], plots: Path) -> str:
    by_server = {r.server: r for r in results}
    bases = [by_server.get(name) for name in YJS_BASELINES]
    repeats = max((len(rr.runs) for r in results for rr in r.rates.values()), default=0)
    top = rates[-1]
    lines = [
        "## Yjs documents",
        "",
        "The protocol of the `y-socket.io` provider (namespace `/yjs|<id>`, binary Yjs v1 "
        "updates). roomserver authenticates each connection, checks every update, commits it "
        "to SQLite (group commit) before relaying it, and snapshots the document. Baselines, "
        "measured in the same run, keep documents in memory only: "
        f"*{YJS_BASELINES[0]}* (bench/servers/plain_yjs.py: a `pycrdt.Doc` per namespace, no "
        "auth, no checks, no storage, updates relayed as received) and "
        f"*{YJS_BASELINES[1]}* (the reference server as the npm package ships it, its "
        "`y-socket-io` bin, no persistence; it echoes each update to the sender as well). "
        "The load generator is bench/node/yjsgen.mjs: Node with `yjs` and `socket.io-client`, "
        "one process on core 1 for every connection, speaking the protocol by hand as the "
        "provider does. roomserver runs on its defaults but for "
        f"`YJS_UNLOAD_AFTER_SECONDS={YJS_UNLOAD_AFTER_SECONDS}` (default 30), so that the "
        "cold joins below do not wait long for the document to leave its memory.",
        "",
        f"### Typing among {EDITORS} editors",
        "",
        f"{EDITORS} connections open one document; {TYPISTS} of them are editors (a Y.Doc "
        "each, applying everything they are sent) that type 1-3 characters per keystroke at "
        "their cursor, a fixed number of keystrokes per second in all; each keystroke is one "
        f"update for the {EDITORS - 1} other connections. *delivered/s*: deliveries per second "
        "from the first keystroke to the last receipt, against what the rate needs "
        f"(rate x {EDITORS - 1}); a server that keeps up delivers about that, one that falls "
        "behind much less. *p50 / p99*: send-to-receipt latency over the run's deliveries. "
        f"Each figure is the median of {repeats} runs of the same keystrokes. "
        "*vs*: roomserver's p50 divided by the baseline's, per rate (above 1x: slower). "
        "*CPU*: share of one core from the first keystroke to the last receipt, per rate; "
        "*other CPU*: what the rest of the machine used meanwhile (other tenants, the "
        "harness excepted), the noise these numbers carry; a run during which it exceeded "
        f"{NOISY:.0%} of a core was run again once a second went by quietly (within "
        f"{NOISY_RETRIES} retries and {NOISY_WAIT_SECONDS:.0f} s of waiting for the whole "
        "scenario; counted as *redone*). Clients offer permessage-deflate "
        "as browsers do: python-socketio accepts it and compresses every message for every "
        "connection (the clients then inflate them); roomserver (unless "
        "`WEBSOCKET_COMPRESSION` is on) and Node's socket.io 4 do not by default.",
        "",
        "| server | "
        + " | ".join(
            f"delivered/s at {rate}/s (needs {rate * (EDITORS - 1):,}) | p50 / p99 at {rate}/s (ms)"
            for rate in rates
        )
        + f" | p50 vs {YJS_BASELINES[0]} | p50 vs {YJS_BASELINES[1]} | server CPU | load CPU "
        f"| other CPU | {EDITORS} connect + sync (s) |",
        "| --- " * (7 + 2 * len(rates)) + "|",
    ]
    for r in results:
        cells = []
        for rate in rates:
            cells += _rate_cells(r.rates[rate])
        versus = [
            " / ".join(
                times(r.rates[rate].p50_ms, base.rates[rate].p50_ms if base else None)
                for rate in rates
            )
            for base in bases
        ]
        cpu = " / ".join(f"{r.rates[rate].server_cpu:.0%}" for rate in rates)
        load = " / ".join(f"{r.rates[rate].load_cpu:.0%}" for rate in rates)
        others = " / ".join(f"{r.rates[rate].others_cpu:.0%}" for rate in rates)
        lines.append(
            f"| {r.server} | {' | '.join(cells)} | {versus[0]} | {versus[1]} | {cpu} | {load} "
            f"| {others} | {r.connect_s:.2f} |"
        )
    lines.append("")

    plain = [r for r in results if r.uncompressed is not None]
    if plain:
        lines += [
            f"The same at {top}/s with clients that do not offer permessage-deflate: what "
            "compression costs python-socketio + pycrdt and the generator that inflates for "
            "all 100 clients on one core (roomserver and Node do not compress either way: "
            "their rows are the run again).",
            "",
            f"| server | delivered/s at {top}/s | p50 / p99 (ms) | p50 vs {YJS_BASELINES[0]} "
            f"| p50 vs {YJS_BASELINES[1]} | server CPU | load CPU | other CPU |",
            "| --- " * 8 + "|",
        ]
        for r in plain:
            rr = r.uncompressed
            assert rr is not None
            versus = [
                times(rr.p50_ms, base.uncompressed.p50_ms if base and base.uncompressed else None)
                for base in bases
            ]
            lines.append(
                f"| {r.server} | {' | '.join(_rate_cells(rr))} | {versus[0]} | {versus[1]} "
                f"| {rr.server_cpu:.0%} | {rr.load_cpu:.0%} | {rr.others_cpu:.0%} |"
            )
        lines.append("")

    joined = [r for r in results if r.join is not None]
    if joined:
        lines += _join_lines(joined, bases)
    ours = by_server.get("roomserver")
    if ours is not None:
        lines += _documents_reading(ours, bases, top)

    figure, axis = plt.subplots(figsize=(7, 4))
    for r in results:
        plot_cdf(axis, r.rates[top].histogram, r.server)
    axis.set_xscale("log")
    axis.set_xlabel("send-to-receipt latency (ms)")
    axis.set_ylabel("share of deliveries")
    axis.set_title(f"Yjs updates: {EDITORS} editors, {TYPISTS} typing, {top} keystrokes/s in all")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(plots / "documents-latency.png", dpi=110)
    plt.close(figure)
    lines += [f"![Yjs update latency]({plots.name}/documents-latency.png)", ""]
    return "\n".join(lines)


def _documents_reading(
    ours: DocumentsResult, bases: list[DocumentsResult | None], top: int
) -> list[str]:
    """The paragraph that reads the tables: computed, so a rerun cannot contradict it."""
    needs = top * (EDITORS - 1)
    everyone = [ours, *(base for base in bases if base is not None)]
    shares = ", ".join(f"{r.server} {r.rates[top].delivered_per_s / needs:.0%}" for r in everyone)
    behind = [
        r.server
        for r in everyone
        if not r.rates[top].complete or r.rates[top].delivered_per_s < 0.97 * needs
    ]
    verdict = (
        "every server keeps up"
        if not behind
        else f"{', '.join(behind)} fall{'s' if len(behind) == 1 else ''} behind"
    )
    mine = ours.rates[top]
    text = (
        f"**Reading them.** At {top} keystrokes/s {verdict} ({shares} of the {needs:,} "
        f"deliveries/s the rate needs). roomserver's p50 / p99 is {ms(mine.p50_ms)} / "
        f"{ms(mine.p99_ms)} ms: "
        + "; ".join(
            f"{times(mine.p50_ms, base.rates[top].p50_ms)} / "
            f"{times(mine.p99_ms, base.rates[top].p99_ms)} {base.server}'s "
            f"({ms(base.rates[top].p50_ms)} / {ms(base.rates[top].p99_ms)} ms)"
            for base in bases
            if base is not None
        )
        + ". Server CPU: "
        + ", ".join(f"{r.server} {r.rates[top].server_cpu:.0%}" for r in everyone)
        + " of a core."
    )
    noisy = [r.server for r in everyone if r.rates[top].others_cpu > NOISY]
    if noisy:
        text += (
            f" Careful: other processes used more than {NOISY:.0%} of a core during the runs "
            f"of {', '.join(noisy)}, whose figures carry that noise."
        )
    python_base = bases[0]
    if python_base is not None:
        extra = mine.server_cpu - python_base.rates[top].server_cpu
        adds = "authorization, checks, the SQLite commit before the relay, snapshots"
        if extra >= 0:
            text += (
                " The Python relay does the same fan-out on the same libraries, so "
                f"roomserver's {extra:+.0%} of a core over it is the cost of what it adds per "
                f"update ({adds}), within this run's noise when it is a few points."
            )
        else:
            text += (
                f" roomserver used {-extra:.0%} of a core less than the Python relay while "
                f"doing more per update ({adds}): the relay compresses every message for "
                "every connection and sends through python-socketio's per-recipient tasks."
            )
    plain = ours.uncompressed
    if plain is not None:
        text += (
            " With clients that offer no permessage-deflate roomserver's p50 is "
            f"{ms(plain.p50_ms)} ms and its CPU {plain.server_cpu:.0%} (offered: "
            f"{ms(mine.p50_ms)} ms, {mine.server_cpu:.0%}), and the generator's CPU "
            f"{plain.load_cpu:.0%} instead of {mine.load_cpu:.0%}"
        )
        if (
            plain.p50_ms is not None
            and mine.p50_ms is not None
            and plain.p50_ms < 0.9 * mine.p50_ms
        ):
            text += (
                ": compression, by the server for each connection and by the generator "
                "inflating for 100 clients on one core, is part of the latency."
            )
        else:
            text += "."
    join = ours.join
    if join is not None:
        answered, synced = join.median("answer_ms"), join.median("synced_ms")
        text += (
            f" A fresh client gets the {join.answer_bytes / 1e6:.2f} MB document from "
            f"roomserver's memory in {ms(answered)} ms and has its text at {ms(synced)} ms, "
            f"{synced - answered:.0f} ms of it the client applying the update (the same for "
            "every server)"
        )
        if join.cold_runs:
            text += (
                f"; from disk the answer takes {ms(join.median('answer_ms', cold=True))} ms, "
                "the load happening before the connection opens (connected at "
                f"{ms(join.median('connect_ms', cold=True))} ms)"
            )
        text += "."
    return [text, ""]


def _rate_cells(rr: RateResult) -> list[str]:
    flag = "" if rr.complete else " (incomplete)"
    flag += f", {rr.server_errors} errors" if rr.server_errors else ""
    flag += f", {rr.disconnects} disconnects" if rr.disconnects else ""
    flag += f", {rr.redone} redone for noise" if rr.redone else ""
    return [f"{rr.delivered_per_s:,.0f}{flag}", f"{ms(rr.p50_ms)} / {ms(rr.p99_ms)}"]


def _join_lines(joined: list[DocumentsResult], bases: list[DocumentsResult | None]) -> list[str]:
    first = joined[0].join
    assert first is not None
    joins = len(first.runs)
    lines = [
        "### Joining a 1 MB document",
        "",
        f"One client writes a document of {first.text_length:,} characters: prose edited in "
        f"{first.sent_updates} sessions, each a new Yjs client inserting sentences at "
        "random places and deleting a little, sent as one update per session "
        f"({first.sent_bytes:,} bytes in all). Then {joins} fresh clients join it one after "
        "another while the document is in the server's memory: *connected*: socket.io "
        "connection open; *answered*: the server's answer to `sync-step-1`, the whole "
        "document, received; *text available*: that answer applied to a new Y.Doc and the "
        "text read, the same client work for every server. Times from `io()`, median of "
        f"{joins} joins; *vs*: the median divided by the baseline's (answered / text "
        "available). *From disk*: roomserver only, joins that each waited until the "
        "document had left its memory, so that the join loaded it from SQLite (the "
        "baselines cannot: they keep nothing).",
        "",
        "| server | answer (bytes) | connected (ms) | answered (ms) | text available (ms) "
        f"| text available, fastest to slowest (ms) | vs {YJS_BASELINES[0]} "
        f"| vs {YJS_BASELINES[1]} | other CPU |",
        "| --- " * 9 + "|",
    ]
    for r in joined:
        j = r.join
        assert j is not None
        for cold in (False, True) if j.cold_runs else (False,):
            runs = j.cold_runs if cold else j.runs
            versus = []
            for base in bases:
                bj = base.join if base else None
                versus.append(
                    " / ".join(
                        times(j.median(key, cold=cold), bj.median(key) if bj else None)
                        for key in ("answer_ms", "synced_ms")
                    )
                )
            synced = [float(run["synced_ms"]) for run in runs]
            name = f"{r.server}, from disk ({len(runs)} joins)" if cold else r.server
            others = "" if cold else f"{j.others_cpu:.0%}"
            lines.append(
                f"| {name} | {int(j.median('ack_bytes', cold=cold)):,} "
                f"| {ms(j.median('connect_ms', cold=cold))} "
                f"| {ms(j.median('answer_ms', cold=cold))} "
                f"| {ms(j.median('synced_ms', cold=cold))} "
                f"| {ms(min(synced))} to {ms(max(synced))} | {versus[0]} | {versus[1]} "
                f"| {others} |"
            )
    lines.append("")
    for r in joined:
        storage = r.join.storage if r.join else None
        if storage is None:
            continue
        stored = storage["snapshot_bytes"] + storage["update_bytes"]
        lines += [
            f"{r.server} stores it in {stored:,} bytes (GET /api/v1/documents/{{id}}/storage, "
            f"once it had left memory): a snapshot of {storage['snapshot_bytes']:,} bytes and "
            f"{storage['update_count']} updates of {storage['update_bytes']:,} bytes after it.",
            "",
        ]
    return lines
