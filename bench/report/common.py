"""What every section of the report uses: number formats, CDF plots, the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.harness import Histogram, installed_npm_version

__all__ = ["machine", "ms", "plot_cdf", "plt", "ratio", "times"]


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
        f"{interpreter()}, python-socketio {version('python-socketio')}, "
        f"python-engineio {version('python-engineio')}, aiohttp {version('aiohttp')}, "
        f"pycrdt {version('pycrdt')}; Node {node}, socket.io {npm['socket.io']}, "
        f"y-socket.io {npm['y-socket.io']}, yjs {npm['yjs']}"
    )


def interpreter() -> str:
    """The Python that ran the run (and its servers) and how it was built: with a
    shared libpython, as pyenv builds it, this server spent 12% more instructions per
    chat message than on Debian's build (README, "Which Python")."""
    with open("/proc/self/maps") as maps:
        shared = any("libpython" in line for line in maps)
    build = "libpython shared" if shared else "libpython linked in"
    return f"Python {platform.python_version()} ({sys.base_prefix}, {build})"


def ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def ratio(ours: float, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "n/a"


def times(ours: float | None, theirs: float | None) -> str:
    """``ours`` as a multiple of ``theirs``."""
    return f"{ours / theirs:.2f}x" if ours is not None and theirs else "n/a"


def plot_cdf(axis: Any, histogram: Histogram, label: str) -> None:
    """The share of values at or below each bucket, on ``axis``."""
    values, counts = histogram.series()
    total, running, cdf = sum(counts), 0, []
    for count in counts:
        running += count
        cdf.append(running / total)
    axis.plot(values, cdf, label=label)
