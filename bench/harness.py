"""Processes the benchmarks start, talk to, measure and stop.

The machine has two cores: servers are pinned to core 0, load generators to core 1,
so a reader can tell who was the limit. Every process is started here, bounded in
time, and ended by its own PID.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "bench" / "node"
SERVER_CPU = "0"
LOAD_CPU = "1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pinned(command: Sequence[str], cpu: str) -> list[str]:
    return ["taskset", "-c", cpu, *command] if shutil.which("taskset") else list(command)


def ensure_node_modules() -> None:
    """``npm ci`` in bench/node unless every dependency is installed at its pinned version."""
    wanted: dict[str, str] = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    if all(
        installed_npm_version(name) == pinned_version for name, pinned_version in wanted.items()
    ):
        return
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def installed_npm_version(package: str) -> str | None:
    manifest = NODE_DIR / "node_modules" / package / "package.json"
    return str(json.loads(manifest.read_text())["version"]) if manifest.exists() else None


# A fixed piece of pure Python, timed on the servers' core: the speed of the machine as a
# run found it (a shared machine's cores are not always as fast as their name says).
_YARDSTICK = """
import statistics, time
def once():
    started = time.perf_counter()
    sum(range(10_000_000))
    return time.perf_counter() - started
print(statistics.median(once() for _ in range(5)) * 1000)
"""


def yardstick_ms() -> float:
    """The median time of the yardstick on the servers' core, in ms (lower: faster)."""
    output = subprocess.run(
        pinned([sys.executable, "-c", _YARDSTICK], SERVER_CPU),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(output)


# --- resource use of a process, from /proc --------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class CpuMeter:
    """CPU use of some processes over an interval, as a share of one core."""

    pids: list[int]
    started: float = 0.0
    cpu_at_start: float = 0.0

    def __enter__(self) -> CpuMeter:
        self.started = time.monotonic()
        self.cpu_at_start = sum(cpu_seconds(pid) for pid in self.pids)
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self.started
        self.cpu = sum(cpu_seconds(pid) for pid in self.pids) - self.cpu_at_start

    @property
    def share(self) -> float:
        return self.cpu / self.elapsed if self.elapsed else 0.0


def machine_busy_seconds() -> float:
    """CPU time used on every core so far, by anyone (steal included: it was not ours)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass
class OthersMeter:
    """CPU that everything but ``pids`` and this process used over an interval, as a share
    of one core: the noise of a shared machine, which the benchmark cannot stop."""

    pids: list[int]
    share: float = 0.0

    def __enter__(self) -> OthersMeter:
        self.ours = CpuMeter([*self.pids, os.getpid()]).__enter__()
        self.busy_at_start = machine_busy_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ours.__exit__()
        others = machine_busy_seconds() - self.busy_at_start - self.ours.cpu
        self.share = max(0.0, others / self.ours.elapsed) if self.ours.elapsed else 0.0


# --- latency histograms (the encoding of bench/node/histogram.mjs) -------------------

BUCKETS = 800


@dataclass
class Histogram:
    """Log-scale buckets: bucket i covers [10^(i/100 - 2), 10^((i+1)/100 - 2)) ms."""

    counts: dict[int, int] = field(default_factory=dict)
    low: float = math.inf
    high: float = 0.0

    def record(self, ms: float) -> Histogram:
        """One value, as histogram.mjs records it."""
        index = math.floor((math.log10(ms) + 2) * 100) if ms > 0 else 0
        index = min(max(index, 0), BUCKETS - 1)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.low, self.high = min(self.low, ms), max(self.high, ms)
        return self

    def merge(self, encoded: dict[str, Any] | None) -> Histogram:
        if not encoded:
            return self
        for index, count in zip(encoded["i"], encoded["c"], strict=True):
            self.counts[index] = self.counts.get(index, 0) + count
        if encoded.get("min") is not None:
            self.low = min(self.low, float(encoded["min"]))
            self.high = max(self.high, float(encoded["max"]))
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def percentile(self, q: float) -> float | None:
        """The q-quantile in ms (the bucket's geometric middle, within ~1.2%)."""
        total = self.total
        if not total:
            return None
        rank, seen = q * total, 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                middle = 10 ** ((index + 0.5) / 100 - 2)
                return min(max(middle, self.low), self.high)
        return self.high

    def series(self) -> tuple[list[float], list[int]]:
        indexes = sorted(self.counts)
        return [10 ** ((i + 0.5) / 100 - 2) for i in indexes], [self.counts[i] for i in indexes]


# --- the Node load generator ----------------------------------------------------------


class LoadWorker:
    """One Node load generator process (``bench/node/*.mjs``), driven by JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, script: str = "loadgen.mjs") -> LoadWorker:
        """A worker running ``bench/node/<script>`` (loadgen.mjs or yjsgen.mjs)."""
        process = await asyncio.create_subprocess_exec(
            *pinned(["node", str(NODE_DIR / script)], LOAD_CPU),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,  # a stats reply carries a histogram
        )
        return cls(process)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def request(self, reply_within: float = 300, **message: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), reply_within)
        if not line:
            raise RuntimeError(f"load worker {self.pid} exited during {message['op']}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"load worker {message['op']}: {reply.get('error')}")
        return reply

    async def stop(self) -> None:
        if self.process.returncode is None:
            try:
                await self.request(op="exit", reply_within=10)
            except (RuntimeError, TimeoutError, ConnectionError, BrokenPipeError):
                pass
        await _end(self.process)


async def _end(process: asyncio.subprocess.Process, grace: float = 10) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        process.kill()
        await process.wait()


# --- servers under test -----------------------------------------------------------------


def _server_log(name: str) -> Any:
    """Where a server's output goes: nowhere, or its file in ``$BENCH_LOG_DIR``."""
    log_dir = os.environ.get("BENCH_LOG_DIR")
    if not log_dir:
        return asyncio.subprocess.DEVNULL
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return open(Path(log_dir) / f"{name.replace(' ', '-')}.log", "ab")


@dataclass
class ServerProcess:
    name: str
    process: asyncio.subprocess.Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(
        cls,
        name: str,
        command: Sequence[str],
        port: int,
        *,
        env: dict[str, str] | None = None,
        ready_path: str = "/socket.io/?EIO=4&transport=polling",
        cpu: str = SERVER_CPU,
        ready_within: float = 60,
    ) -> ServerProcess:
        """Start ``command`` pinned to ``cpu`` (the servers' core unless told otherwise).

        Its output is dropped, or appended to ``$BENCH_LOG_DIR/<name>.log`` when that
        is set (to see why a server refused something during a run).
        """
        output = _server_log(name)
        try:
            process = await asyncio.create_subprocess_exec(
                *pinned(command, cpu),
                env={**os.environ, **(env or {})},
                cwd=ROOT,
                stdout=output,
                stderr=output,
            )
        finally:
            if not isinstance(output, int):
                output.close()  # the child has its own copy
        server = cls(name, process, port)
        await server._wait_ready(ready_path, ready_within)
        return server

    async def _wait_ready(self, path: str, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                await writer.drain()
                status = await asyncio.wait_for(reader.readline(), 5)
                writer.close()
                if b" 200 " in status:
                    return
            except (OSError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become ready in {within}s")

    async def stop(self) -> None:
        await _end(self.process)
