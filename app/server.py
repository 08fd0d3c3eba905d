"""Serving one process: listen, and on SIGTERM/SIGINT drain before stopping."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from app.config import Settings
from app.keys import DRAINING
from app.main import create_app

log = logging.getLogger(__name__)

# Connections the kernel may hold accepted before the loop takes them (capped by
# net.core.somaxconn). aiohttp's default, 128, overflowed when a crowd connected at once
# while the loop was busy: each dropped SYN cost its client a 1 s retransmission
# (1,000 users connecting 400 at a time: ~100 of them, join p99 ~1.1 s).
LISTEN_BACKLOG = 4096


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop for ``EVENT_LOOP`` (``auto``: uvloop where it is installed)."""
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def tune_gc(settings: Settings) -> None:
    """The cyclic GC, once the server has started (GC_FREEZE, GC_YOUNG_THRESHOLD)."""
    if settings.gc_freeze:
        # Everything loaded so far (modules, the ORM's and pydantic's tables, clients)
        # lives as long as the process: out of the cyclic GC's sight, full collections
        # walk only what connections and requests allocate.
        gc.collect()
        gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(settings.gc_young_threshold, older, oldest)


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,  # the observe middleware writes one structured line instead
        shutdown_timeout=settings.shutdown_timeout_seconds,
    )
    await runner.setup()  # opens the database and Redis, checks migrations
    try:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=LISTEN_BACKLOG)
        await site.start()
        tune_gc(settings)
        log.info("listening on http://%s:%d (env=%s)", settings.host, settings.port, settings.env)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down: draining for %.1fs", settings.shutdown_grace_seconds)
        app[DRAINING].set()
        if settings.shutdown_grace_seconds:
            await asyncio.sleep(settings.shutdown_grace_seconds)
    finally:
        # Stops the listener, runs on_shutdown (disconnect clients), waits for
        # open requests, then closes the pools in the cleanup contexts.
        await runner.cleanup()
        log.info("stopped")
