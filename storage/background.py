"""One worker thread for CPU-heavy work that must not slow the event loop down.

Embedding a question with the local model costs about 12 ms of CPU, and Qdrant's local
mode scores in Python; both run in threads of their own, yet on a busy core they took
the event loop's turn: during 50 assistant asks at once, other rooms' chat acks waited
up to 8x their usual p99 (docs/benchmarks.md, "Assistant replies"). These threads run
at the lowest CPU priority instead (nice 19), so on a busy machine they get what the
event loop leaves and the sockets keep their latency; on an idle one nothing changes.

Linux gives each thread its own nice value, so this lowers the worker alone; elsewhere
a nice value belongs to the whole process, and the worker keeps the process's.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

LOWEST_PRIORITY = 19


def background_executor(name: str) -> ThreadPoolExecutor:
    """A one-thread executor whose thread runs at the lowest CPU priority."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_lowest)


def _lowest() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
    except OSError as exc:  # a sandbox that forbids it: the thread keeps its priority
        log.warning("could not lower a background thread's priority: %s", exc)
