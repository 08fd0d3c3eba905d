"""The file: one header, then the sections, each from the run that measured it."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report.common import machine

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
    machine_line = re.search(r"^Machine: (.+)\.$", header, re.MULTILINE)
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
    for run in runs.values():
        # Recorded before each run kept its own: the one machine the header named.
        if "machine" not in run and machine_line:
            run["machine"] = machine_line[1]
    return sections, runs


def _yardstick(run: dict[str, Any]) -> str:
    start, end = run.get("yardstick_ms") or (None, None)
    if start is None:
        return "yardstick not recorded"
    return f"yardstick {start:.0f} / {end:.0f} ms"


def write(
    path: Path,
    *,
    command: str,
    elapsed_s: float,
    repeats: int,
    sections: list[str],
    yardstick_ms: tuple[float, float],
    keep_others: bool = False,
) -> None:
    """Write the report; ``keep_others``: keep the sections of the existing file that
    this run did not measure, in their place, each credited to the run that did.
    ``yardstick_ms``: ``bench.harness.yardstick_ms`` at the run's start and end."""
    run = {
        "command": command,
        "at": f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        "minutes": round(elapsed_s / 60, 1),
        "repeats": repeats,
        "machine": machine(),
        "yardstick_ms": [round(value, 1) for value in yardstick_ms],
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
    yardstick = (
        "*Yardstick*: a fixed piece of pure Python (`sum(range(10_000_000))`, median of 5) "
        "timed on the servers' core at a run's start and end: how fast the machine was "
        "then (lower is faster; a shared machine's cores are not always as fast as their "
        "name says)."
    )
    if len(distinct) == 1:
        written = (
            f"Written by `{run['command']}` on {run['at']} UTC in {run['minutes']:.1f} minutes "
            f"({_yardstick(run)}). Every number comes from this one run; the machine is "
            "shared and noisy, so compare ratios within the run rather than across runs. "
            f"Throughput figures are medians of {run['repeats']} repeats. {yardstick}"
        )
        machines = f"Machine: {run['machine']}."
    else:
        credits = "; ".join(
            f"`{r['command']}` on {r['at']} UTC in {r['minutes']:.1f} minutes"
            + (f", {r['repeats']} repeats" if r.get("repeats") else "")
            + f", {_yardstick(r)} ("
            + ", ".join(title for title in runs if runs[title] == r)
            + ")"
            for r in distinct
        )
        written = (
            f"Written by {len(distinct)} runs of the suite: {credits}. Every table comes "
            "from one run, and the servers it compares ran in that same run; the machine "
            "is shared and noisy, so compare ratios within a table rather than across "
            f"runs. Throughput figures are medians of the run's repeats. {yardstick}"
        )
        named = [r.get("machine", "not recorded") for r in distinct]
        if len(set(named)) == 1:
            machines = f"Machine: {named[0]}."
        else:
            machines = (
                "Machines: "
                + "; ".join(
                    f"{r['at']} UTC: {name}" for r, name in zip(distinct, named, strict=True)
                )
                + "."
            )
    header = [
        "# Benchmarks",
        "",
        written,
        "",
        machines,
        "",
        "Servers ran pinned to core 0 and the load generators (Node: `socket.io-client` in "
        "bench/node/loadgen.mjs, or its minimal client bench/node/wire.mjs where a section "
        "says so, with `yjs` in bench/node/yjsgen.mjs for the Yjs documents, "
        "bench/node/aigen.mjs for the assistant, whose stand-in upstream shares their core) "
        "to core 1; the *load CPU* column shows the generators were not the limit when it "
        "stays well under 100%. Every server runs with its library defaults (roomserver: "
        "no permessage-deflate, the baselines: their libraries' choice); roomserver "
        "relays with `presence:update` → `presence:state` (validated, per-connection state "
        "kept), the baselines with a `broadcast` that sends each client the same envelope.",
        "",
        f"{RUNS_MARKER}{json.dumps(runs)} -->",
        "",
        "",
    ]
    path.write_text("\n".join(header) + "\n".join(ordered))
