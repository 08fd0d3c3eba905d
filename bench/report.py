"""Render results as docs/benchmarks.md with PNG plots beside it."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.harness import installed_npm_version
from bench.scenarios.chat import ChatResult
from bench.scenarios.documents import (
    EDITORS,
    NOISY,
    NOISY_RETRIES,
    NOISY_WAIT_SECONDS,
    TYPISTS,
    DocumentsResult,
    RateResult,
)
from bench.scenarios.fanout import FanoutResult
from bench.targets import YJS_BASELINES, YJS_UNLOAD_AFTER_SECONDS

BASELINES = ("plain python-socketio", "Node socket.io 4")


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    npm = {name: installed_npm_version(name) or "?" for name in ("socket.io", "y-socket.io", "yjs")}
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB; Linux {platform.release()}; "
        f"Python {platform.python_version()}, python-socketio {version('python-socketio')}, "
        f"python-engineio {version('python-engineio')}, aiohttp {version('aiohttp')}, "
        f"pycrdt {version('pycrdt')}; Node {node}, socket.io {npm['socket.io']}, "
        f"y-socket.io {npm['y-socket.io']}, yjs {npm['yjs']}"
    )


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ratio(ours: float, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "n/a"


def _latency_cell(result: FanoutResult, rate: int) -> str:
    histogram = result.latency[rate]
    if histogram is None:
        return f"over capacity (needs {rate * result.size:,}/s)"
    return f"{_ms(histogram.percentile(0.5))} / {_ms(histogram.percentile(0.99))}"


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
            vs_python = _ratio(
                r.delivered_per_s, python_base.delivered_per_s if python_base else None
            )
            vs_node = _ratio(r.delivered_per_s, node_base.delivered_per_s if node_base else None)
            lines.append(
                f"| {server} | {r.delivered_per_s:,.0f}{flag} | {vs_python} | {vs_node} "
                f"| {latency} | {r.connect_s:.2f} | {_ms(r.join_p50_ms)} / {_ms(r.join_p99_ms)} "
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
        values, counts = histogram.series()
        total, running, cdf = sum(counts), 0, []
        for count in counts:
            running += count
            cdf.append(running / total)
        axis.plot(values, cdf, label=r.server)
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


def chat_section(results: list[ChatResult]) -> str:
    lines = [
        "## Chat with persistence",
        "",
        "roomserver only (the baselines store nothing). Each sender sends, waits for the ack "
        "(the message is committed with its `seq`), and sends again. All senders share one "
        "room, the hot-room case: a document's sends are ordered by design, so one room's "
        "rate is the rate of one ordered stream of commits, each also fanned out to the "
        "other senders.",
        "",
        "| database | senders | acked sends/s | ack p50 (ms) | ack p99 (ms) | failed "
        "| server CPU |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.backend} | {r.senders} | {r.acked_per_s:,.0f} "
            f"| {_ms(r.latency.percentile(0.5))} | {_ms(r.latency.percentile(0.99))} "
            f"| {r.failed} | {sorted(r.server_cpu)[len(r.server_cpu) // 2]:.0%} |"
        )
    return "\n".join(lines) + "\n"


def _cdf(axis: Any, histogram: Any, label: str) -> None:
    values, counts = histogram.series()
    total, running, cdf = sum(counts), 0, []
    for count in counts:
        running += count
        cdf.append(running / total)
    axis.plot(values, cdf, label=label)


def _x(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}x" if ours is not None and theirs else "n/a"


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
        "as browsers do: the two aiohttp-based servers accept it and compress every message "
        "for every connection (the clients then inflate them), Node's socket.io 4 does not "
        "by default.",
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
                _x(r.rates[rate].p50_ms, base.rates[rate].p50_ms if base else None)
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
            "compression costs the two aiohttp-based servers, and the generator that inflates "
            "for all 100 clients on one core.",
            "",
            f"| server | delivered/s at {top}/s | p50 / p99 (ms) | p50 vs {YJS_BASELINES[0]} "
            f"| p50 vs {YJS_BASELINES[1]} | server CPU | load CPU | other CPU |",
            "| --- " * 8 + "|",
        ]
        for r in plain:
            rr = r.uncompressed
            assert rr is not None
            versus = [
                _x(rr.p50_ms, base.uncompressed.p50_ms if base and base.uncompressed else None)
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
        _cdf(axis, r.rates[top].histogram, r.server)
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
        f"deliveries/s the rate needs). roomserver's p50 / p99 is {_ms(mine.p50_ms)} / "
        f"{_ms(mine.p99_ms)} ms: "
        + "; ".join(
            f"{_x(mine.p50_ms, base.rates[top].p50_ms)} / {_x(mine.p99_ms, base.rates[top].p99_ms)}"
            f" {base.server}'s ({_ms(base.rates[top].p50_ms)} / {_ms(base.rates[top].p99_ms)} ms)"
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
        text += (
            f" The Python relay does the same fan-out on the same libraries, so roomserver's "
            f"{extra:+.0%} of a core over it is the cost of what it adds per update "
            "(authorization, checks, the SQLite commit before the relay, snapshots), within "
            "this run's noise when it is a few points."
        )
    plain = ours.uncompressed
    if plain is not None:
        text += (
            f" Without permessage-deflate roomserver's p50 is {_ms(plain.p50_ms)} ms and its "
            f"CPU {plain.server_cpu:.0%} (with it: {_ms(mine.p50_ms)} ms, "
            f"{mine.server_cpu:.0%}), and the generator's CPU {plain.load_cpu:.0%} instead of "
            f"{mine.load_cpu:.0%}"
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
            f"roomserver's memory in {_ms(answered)} ms and has its text at {_ms(synced)} ms, "
            f"{synced - answered:.0f} ms of it the client applying the update (the same for "
            "every server)"
        )
        if join.cold_runs:
            text += (
                f"; from disk the answer takes {_ms(join.median('answer_ms', cold=True))} ms, "
                "the load happening before the connection opens (connected at "
                f"{_ms(join.median('connect_ms', cold=True))} ms)"
            )
        text += "."
    return [text, ""]


def _rate_cells(rr: RateResult) -> list[str]:
    flag = "" if rr.complete else " (incomplete)"
    flag += f", {rr.server_errors} errors" if rr.server_errors else ""
    flag += f", {rr.disconnects} disconnects" if rr.disconnects else ""
    flag += f", {rr.redone} redone for noise" if rr.redone else ""
    return [f"{rr.delivered_per_s:,.0f}{flag}", f"{_ms(rr.p50_ms)} / {_ms(rr.p99_ms)}"]


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
                        _x(j.median(key, cold=cold), bj.median(key) if bj else None)
                        for key in ("answer_ms", "synced_ms")
                    )
                )
            synced = [float(run["synced_ms"]) for run in runs]
            name = f"{r.server}, from disk ({len(runs)} joins)" if cold else r.server
            others = "" if cold else f"{j.others_cpu:.0%}"
            lines.append(
                f"| {name} | {int(j.median('ack_bytes', cold=cold)):,} "
                f"| {_ms(j.median('connect_ms', cold=cold))} "
                f"| {_ms(j.median('answer_ms', cold=cold))} "
                f"| {_ms(j.median('synced_ms', cold=cold))} "
                f"| {_ms(min(synced))} to {_ms(max(synced))} | {versus[0]} | {versus[1]} "
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


# --- the file: one header, then the sections, each from the run that measured it -----

RUNS_MARKER = "<!-- bench runs: "


def _title(section: str) -> str:
    return section.split("\n", 1)[0].removeprefix("## ").strip()


def _read(path: Path) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The sections of an existing report and the run each came from."""
    text = path.read_text()
    first = text.find("\n## ")
    if first < 0:
        return [], {}
    header = text[:first]
    sections = ["## " + part for part in text[first + 4 :].split("\n## ")]
    runs: dict[str, dict[str, Any]] = {}
    if RUNS_MARKER in header:
        recorded = header.split(RUNS_MARKER, 1)[1].split(" -->", 1)[0]
        runs = json.loads(recorded)
    else:  # written before runs were recorded: one run, described in the first line
        written = re.search(r"Written by `([^`]*)` on (.+?) UTC in ([\d.]+) minutes", header)
        repeats = re.search(r"medians of (\d+) repeats", header)
        if written:
            run = {
                "command": written[1],
                "at": written[2],
                "minutes": float(written[3]),
                "repeats": int(repeats[1]) if repeats else None,
            }
            runs = {_title(section): run for section in sections}
    return sections, runs


def write(
    path: Path,
    *,
    command: str,
    elapsed_s: float,
    repeats: int,
    sections: list[str],
    keep_others: bool = False,
) -> None:
    """Write the report; ``keep_others``: keep the sections of the existing file that
    this run did not measure, in their place, each credited to the run that did."""
    run = {
        "command": command,
        "at": f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        "minutes": round(elapsed_s / 60, 1),
        "repeats": repeats,
    }
    fresh = {_title(section): section for section in sections}
    ordered: list[str] = []
    runs: dict[str, dict[str, Any]] = {}
    if keep_others and path.exists():
        old_sections, old_runs = _read(path)
        for section in old_sections:
            title = _title(section)
            if title in fresh:
                ordered.append(fresh.pop(title))
                runs[title] = run
            elif title in old_runs:
                ordered.append(section.rstrip("\n") + "\n")
                runs[title] = old_runs[title]
    for title, section in fresh.items():
        ordered.append(section)
        runs[title] = run

    distinct: list[dict[str, Any]] = []
    for title in runs:
        if runs[title] not in distinct:
            distinct.append(runs[title])
    if len(distinct) == 1:
        written = (
            f"Written by `{run['command']}` on {run['at']} UTC in {run['minutes']:.1f} minutes. "
            "Every number comes from this one run; the machine is shared and noisy, so compare "
            "ratios within the run rather than across runs. "
            f"Throughput figures are medians of {run['repeats']} repeats."
        )
    else:
        credits = "; ".join(
            f"`{r['command']}` on {r['at']} UTC in {r['minutes']:.1f} minutes"
            + (f", {r['repeats']} repeats" if r.get("repeats") else "")
            + " ("
            + ", ".join(title for title in runs if runs[title] == r)
            + ")"
            for r in distinct
        )
        written = (
            f"Written by {len(distinct)} runs of the suite on this machine: {credits}. Every "
            "table comes from one run, and the servers it compares ran in that same run; the "
            "machine is shared and noisy, so compare ratios within a table rather than across "
            "runs. Throughput figures are medians of the run's repeats."
        )
    header = [
        "# Benchmarks",
        "",
        written,
        "",
        f"Machine: {machine()}.",
        "",
        "Servers ran pinned to core 0 and the load generators (Node: `socket.io-client` in "
        "bench/node/loadgen.mjs, with `yjs` in bench/node/yjsgen.mjs for the Yjs documents) "
        "to core 1; the *load CPU* column shows the generators were not the limit when it "
        "stays well under 100%. Every server runs with its library defaults; roomserver "
        "relays with `presence:update` → `presence:state` (validated, per-connection state "
        "kept), the baselines with a bare `broadcast`.",
        "",
        f"{RUNS_MARKER}{json.dumps(runs)} -->",
        "",
        "",
    ]
    path.write_text("\n".join(header) + "\n".join(ordered))
