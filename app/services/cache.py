"""A small expiring cache for what every connection reads (accounts, room access).

The services that change what an entry holds drop it (exact within this process);
every entry also expires after ``ttl`` seconds, so what another process changed is
seen within that time. The number of entries is bounded (the oldest go first).
Callers that miss the same key at the same moment share one load, and
``BatchedLoads`` reads the different keys missed at about the same moment together.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Keys in one batched read: each is a bound parameter of an IN (...), and SQLite
# before 3.32 takes at most 999 of them in a statement.
BATCH_MAX_KEYS = 500


class ExpiringCache(Generic[K, V]):
    def __init__(self, *, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires < time.monotonic():
            del self._entries[key]
            return None
        return value

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The cached value, or ``load()``'s (shared by callers missing ``key`` meanwhile;
        a failed load is not cached and fails each of them; a cancelled one is made
        again by the next of them)."""
        while True:
            value = self.get(key)
            if value is not None:
                return value
            loading = self._loading.get(key)
            if loading is None:
                return await self._load(key, load)
            try:
                return await asyncio.shield(loading)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if loading.cancelled() and task is not None and not task.cancelling():
                    continue  # the caller that was loading it was cancelled, not this one
                raise

    async def _load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        loading: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = loading
        try:
            value = await load()
        except asyncio.CancelledError:
            if self._loading.get(key) is loading:
                del self._loading[key]
            loading.cancel()
            raise
        except BaseException as exc:
            if self._loading.get(key) is loading:
                del self._loading[key]
            loading.set_exception(exc)
            loading.exception()  # retrieved: the waiters (if any) re-raise it
            raise
        # Dropped while it loaded: what it read may be stale, so it is not kept.
        if self._loading.get(key) is loading:
            del self._loading[key]
            self.put(key, value)
        loading.set_result(value)
        return value

    def put(self, key: K, value: V) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (time.monotonic() + self.ttl, value)
        if len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]

    def drop(self, key: K) -> None:
        self._entries.pop(key, None)
        self._loading.pop(key, None)  # a load in flight may have read the old value

    def drop_where(self, matches: Callable[[K], bool]) -> None:
        """Drop every entry whose key ``matches`` (rare changes: a scan is fine)."""
        for key in [key for key in self._entries if matches(key)]:
            del self._entries[key]
        for key in [key for key in self._loading if matches(key)]:
            del self._loading[key]


class BatchedLoads(Generic[K, V]):
    """One read for the keys that callers ask for at about the same moment.

    A burst of connects and joins missed the caches one key at a time, each in a
    transaction of its own (~0.6 ms of CPU on SQLite, most of it the transaction and
    the hops to the driver's thread; a key in a batch of 50 costs ~20 µs). Keys asked
    for while no read runs are read together from the next turn of the event loop;
    those asked for while one runs wait for it to end and go in the next, so a burst
    batches itself and a lone caller waits for nobody. A key asked for twice before
    its read starts is read once; one asked for again after its read started is read
    again by the next (a change that committed meanwhile may have dropped it from the
    cache, and that caller must see the change).
    """

    def __init__(
        self,
        load_many: Callable[[list[K]], Awaitable[Mapping[K, V]]],
        *,
        max_keys: int = BATCH_MAX_KEYS,
    ) -> None:
        self._load_many = load_many
        self._max_keys = max_keys
        self._waiting: dict[K, asyncio.Future[V | None]] = {}
        self._running: asyncio.Task[None] | None = None

    async def load(self, key: K) -> V | None:
        """``key``'s value (None: ``load_many`` found none); a failed read fails each
        of its callers."""
        future = self._waiting.get(key)
        if future is None:
            future = self._waiting[key] = asyncio.get_running_loop().create_future()
            if self._running is None:
                self._start()
        return await asyncio.shield(future)

    def _start(self) -> None:
        self._running = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        # Taken at the start of the task, not when it was made: the callers that
        # became ready in the same turn are in it.
        keys = list(itertools.islice(self._waiting, self._max_keys))
        futures = [self._waiting.pop(key) for key in keys]
        try:
            found = await self._load_many(keys)
        except Exception as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # retrieved: the callers (if any) re-raise it
        except BaseException:
            # The loop is ending (nothing else cancels this task): so does every wait.
            for future in [*futures, *self._waiting.values()]:
                future.cancel()
            self._waiting.clear()
            raise
        else:
            for key, future in zip(keys, futures, strict=True):
                if not future.done():
                    future.set_result(found.get(key))
        finally:
            self._running = None
            if self._waiting:
                self._start()
