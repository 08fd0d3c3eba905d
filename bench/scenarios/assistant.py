"""Assistant replies: 50 streaming at once, in 50 rooms, from a stand-in upstream.

roomserver runs with ``ANTHROPIC_API_KEY``/``ANTHROPIC_BASE_URL`` pointing to
bench/servers/anthropic_standin.py, a local Messages-streaming server (its own process)
that streams every reply at a fixed token rate and writes into each token the moment
it sent it upstream. 50 rooms of 3 connections each (the asker and two listeners, three
users); every room asks once, the asks spread over the first second, so 50 replies
stream at once through the official SDK, the server's coalescing (``ai:chunk``) and
Socket.IO. Per run: every token's latency from its upstream write to its receipt at each
of the 3 clients (a chunk carries several tokens, each with its own send time), from
``ai:ask`` to the asker's first chunk, replies complete at every client, ``ai:chunk``
events per second, CPU of the server, the stand-in, the load generator and the rest of
the machine (a noisy run is redone, within a budget).

Event-loop health: a chat probe in 10 other rooms (``chat:send`` with ack, 1/s in each,
a fixed schedule, open loop) runs during the replies and, in the same repeat, alone just
before: its ack latency with and without 50 replies streaming, and by the phase of the
run (replies starting, only streaming, ending).

All of it twice: with the default coalescing (``AI_CHUNK_INTERVAL_SECONDS`` 0.05) and
with none (0: one event per token), to show what batching buys. Once, before the
server starts: the server's responder alone (bench/sdk_only.py, on the server's core)
consuming the same 50 streams, what a streamed token costs before roomserver does
anything with the text.

Placement: roomserver on core 0; the load generator (bench/node/aigen.mjs, all 170
connections) and the stand-in on core 1. The real upstream is another machine: the
stand-in must not take the server's core, and its CPU is measured and reported.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from bench.harness import (
    LOAD_CPU,
    ROOT,
    SERVER_CPU,
    CpuMeter,
    Histogram,
    LoadWorker,
    OthersMeter,
    ServerProcess,
    free_port,
    pinned,
)
from bench.scenarios.documents import NOISY, NoiseBudget
from bench.targets import Target, api_call, ours

ROOMS = 50
PER_ROOM = 3  # connections in each room, the asker first
USERS = 10  # room i: owned by user i % 10, who asks; the next two users listen
TOKENS = 300  # per reply
TOKEN_RATE = 50  # tokens/s per reply, upstream
ASK_SPREAD_SECONDS = 1.0
WARM_UP_TOKENS = 10
PROBE_ROOMS = 10  # other rooms, a sender and a listener each
PROBE_RATE = 10  # chat sends/s in all, the probe rooms in turn: 1/s each
PROBE_SECONDS = 5.0  # the probe alone, before each run of replies
# (label, AI_CHUNK_INTERVAL_SECONDS)
CHUNKINGS = (("0.05 s (default)", "0.05"), ("0: one event per token", "0"))
NOISE_RETRIES = 3
NOISE_WAIT_SECONDS = 20.0
# The phases of a run of replies, for the probe's sends: until every reply has streamed
# its first chunk (asks checked, prompts read from the database, upstream requests
# opened), until the first reply ends (streaming only), and the rest (replies stored).
PHASES = ("starting", "streaming", "ending")


@dataclass
class ProbeRun:
    acked: int
    failed: int
    hist: dict[str, Any]
    server_cpu: float
    others_cpu: float


@dataclass
class ReplyRun:
    asked: int
    ask_failed: int
    ask_errors: dict[str, int]
    completed: int
    errors: int
    timed_out: bool
    tokens: int
    expected_tokens: int
    chunks: int
    gaps: int
    malformed: int
    disconnects: int
    seconds: float  # first chunk to last chunk
    elapsed: float  # first ask to every reply's end
    hist: dict[str, Any]
    first_chunk_hist: dict[str, Any]
    probe: ProbeRun
    # Per phase: the probe's ack latencies (ms) and the phase's length (s).
    phase_acks: dict[str, list[float]]
    phase_seconds: dict[str, float]
    server_cpu: float
    server_cpu_s: float  # CPU seconds, for the cost per token
    upstream_cpu: float
    load_cpu: float
    others_cpu: float

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_chunk(self) -> float:
        return self.tokens / self.chunks if self.chunks else 0.0

    @property
    def cpu_per_token_us(self) -> float:
        """Server CPU of the whole run (asks, prompts, stores, the probe too) per token
        streamed upstream."""
        upstream = (self.asked - self.ask_failed) * TOKENS
        return self.server_cpu_s / upstream * 1e6 if upstream else 0.0


@dataclass
class AssistantResult:
    chunking: str
    interval: str
    connect_s: float
    runs: list[ReplyRun] = field(default_factory=list)
    idle: list[ProbeRun] = field(default_factory=list)  # the probe with no replies
    redone: int = 0  # runs discarded for noise
    # The responder alone (bench/sdk_only.py): CPU per token, None if it failed.
    responder_us: float | None = None

    @property
    def latency(self) -> Histogram:
        """Every token at every client, all runs."""
        return _merged(run.hist for run in self.runs)

    @property
    def first_chunk(self) -> Histogram:
        return _merged(run.first_chunk_hist for run in self.runs)

    @property
    def probe_idle(self) -> Histogram:
        return _merged(probe.hist for probe in self.idle)

    @property
    def probe_busy(self) -> Histogram:
        return _merged(run.probe.hist for run in self.runs)

    def probe_phase(self, phase: str) -> Histogram:
        histogram = Histogram()
        for run in self.runs:
            for ms in run.phase_acks[phase]:
                histogram.record(ms)
        return histogram

    def phase_seconds(self, phase: str) -> float:
        return statistics.median(run.phase_seconds[phase] for run in self.runs)

    @property
    def asked(self) -> int:
        return sum(run.asked for run in self.runs)

    @property
    def completed(self) -> int:
        return sum(run.completed for run in self.runs)

    @property
    def tokens(self) -> int:
        return sum(run.tokens for run in self.runs)

    @property
    def expected_tokens(self) -> int:
        return sum(run.expected_tokens for run in self.runs)

    @property
    def trouble(self) -> str:
        """What went wrong in any run, or an empty string."""
        problems: list[str] = []
        refused: dict[str, int] = {}
        for run in self.runs:
            for code, count in run.ask_errors.items():
                refused[code] = refused.get(code, 0) + count
        problems += [f"{count} asks refused ({code})" for code, count in refused.items()]
        for name in ("errors", "gaps", "malformed", "disconnects"):
            total = sum(getattr(run, name) for run in self.runs)
            if total:
                problems.append(f"{total} {'ai:error' if name == 'errors' else name}")
        timeouts = sum(run.timed_out for run in self.runs)
        if timeouts:
            problems.append(f"{timeouts} runs timed out")
        failed = sum(run.probe.failed for run in self.runs) + sum(p.failed for p in self.idle)
        if failed:
            problems.append(f"{failed} chat sends failed")
        return ", ".join(problems)

    def median(self, name: str) -> float:
        return statistics.median(float(getattr(run, name)) for run in self.runs)

    def idle_median(self, name: str) -> float:
        return statistics.median(float(getattr(probe, name)) for probe in self.idle)


def _merged(encoded: Any) -> Histogram:
    histogram = Histogram()
    for one in encoded:
        histogram.merge(one)
    return histogram


@asynccontextmanager
async def standin(origin_ns: int) -> AsyncIterator[ServerProcess]:
    port = free_port()
    server = await ServerProcess.start(
        "anthropic stand-in",
        [
            sys.executable,
            "-m",
            "bench.servers.anthropic_standin",
            str(port),
            str(origin_ns),
            str(TOKEN_RATE),
        ],
        port,
        ready_path="/health",
        cpu=LOAD_CPU,
    )
    try:
        yield server
    finally:
        await server.stop()


def _make_rooms(base: str, tokens: list[str], count: int, size: int) -> list[dict[str, Any]]:
    """``count`` documents, room i owned by user i % USERS with the next ``size - 1``
    users as editors; each entry lists its connections' tokens, the owner first."""
    ids = [api_call(base, "GET", "/api/v1/auth/me", token=token)["id"] for token in tokens]
    rooms = []
    for index in range(count):
        users = [(index + k) % len(tokens) for k in range(size)]
        owner = tokens[users[0]]
        document = api_call(base, "POST", "/api/v1/documents", {"title": f"room {index}"}, owner)
        for user in users[1:]:
            path = f"/api/v1/documents/{document['id']}/members/{ids[user]}"
            api_call(base, "PUT", path, {"role": "editor"}, owner)
        rooms.append({"document_id": document["id"], "tokens": [tokens[u] for u in users]})
    return rooms


async def _run(worker: LoadWorker, *, ask: bool, tokens: int = TOKENS) -> dict[str, Any]:
    reply_seconds = ASK_SPREAD_SECONDS + tokens / TOKEN_RATE
    return await worker.request(
        op="run",
        ask=ask,
        question=f"Summarise the plan for the room, please. tokens={tokens}",
        tokens_per_reply=tokens,
        spread_ms=int(ASK_SPREAD_SECONDS * 1000),
        probe_rate=PROBE_RATE,
        probe_ms=int(PROBE_SECONDS * 1000),
        timeout_ms=int((reply_seconds + 30) * 1000),
        reply_within=reply_seconds + PROBE_SECONDS + 60,
    )


def _probe_run(probe: dict[str, Any], server_cpu: float, others_cpu: float) -> ProbeRun:
    return ProbeRun(probe["acked"], probe["failed"], probe["hist"], server_cpu, others_cpu)


async def probe_alone(target: Target, worker: LoadWorker, pids: list[int]) -> ProbeRun:
    with CpuMeter([target.server.pid]) as server_cpu, OthersMeter(pids) as others:
        reply = await _run(worker, ask=False)
    return _probe_run(reply["probe"], server_cpu.share, others.share)


async def replies(
    target: Target, upstream: ServerProcess, worker: LoadWorker, pids: list[int]
) -> ReplyRun:
    with (
        CpuMeter([target.server.pid]) as server_cpu,
        CpuMeter([upstream.pid]) as upstream_cpu,
        CpuMeter([worker.pid]) as load_cpu,
        OthersMeter(pids) as others,
    ):
        reply = await _run(worker, ask=True)
    first, last = reply["first_chunk_ms"], reply["last_chunk_ms"]
    acks, seconds = _phases(reply)
    return ReplyRun(
        asked=reply["asked"],
        ask_failed=reply["ask_failed"],
        ask_errors=reply["ask_errors"],
        completed=reply["completed"],
        errors=reply["errors"],
        timed_out=reply["timed_out"],
        tokens=reply["tokens"],
        expected_tokens=reply["expected_tokens"],
        chunks=reply["chunks"],
        gaps=reply["gaps"],
        malformed=reply["malformed"],
        disconnects=reply["disconnects"],
        seconds=(last - first) / 1000 if first is not None and last is not None else 0.0,
        elapsed=reply["elapsed_ms"] / 1000,
        hist=reply["hist"],
        first_chunk_hist=reply["first_chunk_hist"],
        probe=_probe_run(reply["probe"], server_cpu.share, others.share),
        phase_acks=acks,
        phase_seconds=seconds,
        server_cpu=server_cpu.share,
        server_cpu_s=server_cpu.cpu,
        upstream_cpu=upstream_cpu.share,
        load_cpu=load_cpu.share,
        others_cpu=others.share,
    )


def _phases(reply: dict[str, Any]) -> tuple[dict[str, list[float]], dict[str, float]]:
    """The probe's acks by the phase they were sent in, and each phase's length."""
    started = reply["started_ms"]
    ended = started + reply["elapsed_ms"]
    first_end = reply["first_end_ms"] if reply["first_end_ms"] is not None else ended
    streaming = reply["all_streaming_ms"]
    streaming = min(streaming if streaming is not None else first_end, first_end)
    bounds = {"starting": (started, streaming), "streaming": (streaming, first_end)}
    bounds["ending"] = (first_end, ended)
    acks: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for sent_at, latency in reply["probe"]["series"] if reply["probe"] else []:
        if latency is None:
            continue
        phase = next((p for p in PHASES[:2] if sent_at < bounds[p][1]), PHASES[2])
        acks[phase].append(float(latency))
    seconds = {phase: max(0.0, (end - begin) / 1000) for phase, (begin, end) in bounds.items()}
    return acks, seconds


async def measure(
    label: str,
    interval: str,
    upstream: ServerProcess,
    origin_ns: int,
    repeats: int,
    noise: NoiseBudget,
) -> AssistantResult:
    settings = {
        "ANTHROPIC_API_KEY": "bench-key",
        "ANTHROPIC_BASE_URL": upstream.url,
        "AI_CHUNK_INTERVAL_SECONDS": interval,
        # Every room asks at once and each user asks in 5 rooms; none may be refused.
        "AI_REPLIES_PER_USER": str(ROOMS),
        "AI_DAILY_TOKENS_PER_USER": str(10**12),
        "AI_DAILY_TOKENS": str(10**12),
    }
    async with ours(users=USERS, settings=settings) as target:
        assert target.tokens is not None
        rooms = await asyncio.to_thread(
            _make_rooms, target.server.url, target.tokens, ROOMS + PROBE_ROOMS, PER_ROOM
        )
        # The probe rooms: a sender (the owner) and a listener each, nobody asks there.
        probes = [{**room, "tokens": room["tokens"][:2]} for room in rooms[ROOMS:]]
        worker = await LoadWorker.start("aigen.mjs")
        try:
            started = time.monotonic()
            await worker.request(
                op="connect",
                url=target.server.url,
                origin_ns=str(origin_ns),
                rooms=rooms[:ROOMS],
                probes=probes,
                concurrency=50,
                timeout_ms=120_000,
                reply_within=150,
            )
            result = AssistantResult(label, interval, time.monotonic() - started)
            # Not measured: short replies open the upstream connections and the documents,
            # and warm every layer on both sides.
            await _run(worker, ask=True, tokens=WARM_UP_TOKENS)
            pids = [target.server.pid, upstream.pid, worker.pid]
            for _ in range(repeats):
                while True:
                    idle = await probe_alone(target, worker, pids)
                    run = await replies(target, upstream, worker, pids)
                    noisy = max(idle.others_cpu, run.others_cpu) > NOISY
                    if not noisy or noise.retries <= 0:
                        break
                    noise.retries -= 1
                    result.redone += 1
                    await noise.settle(pids)
                result.idle.append(idle)
                result.runs.append(run)
            return result
        finally:
            await worker.stop()


async def responder_alone(upstream: ServerProcess) -> float | None:
    """Server CPU per token of the responder's streaming alone, in µs (None: it failed)."""
    command = [
        sys.executable,
        "-m",
        "bench.sdk_only",
        upstream.url,
        str(ROOMS),
        str(TOKENS),
        str(ASK_SPREAD_SECONDS),
    ]
    process = await asyncio.create_subprocess_exec(
        *pinned(command, SERVER_CPU),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(
            process.communicate(), ASK_SPREAD_SECONDS + TOKENS / TOKEN_RATE + 60
        )
    except TimeoutError:
        process.kill()
        await process.wait()
        return None
    if process.returncode != 0 or not out.strip():
        return None
    reply = json.loads(out)
    return float(reply["cpu_s"]) / reply["tokens"] * 1e6 if reply["tokens"] else None


async def run(*, repeats: int) -> AsyncIterator[AssistantResult]:
    origin_ns = time.monotonic_ns()
    noise = NoiseBudget(retries=NOISE_RETRIES, wait_s=NOISE_WAIT_SECONDS)
    async with standin(origin_ns) as upstream:
        responder_us = await responder_alone(upstream)
        for label, interval in CHUNKINGS:
            result = await measure(label, interval, upstream, origin_ns, repeats, noise)
            result.responder_us = responder_us
            yield result
