"""A small expiring cache for what every connection reads (accounts, room access).

The services that change what an entry holds drop it (exact within this process);
every entry also expires after ``ttl`` seconds, so what another process changed is
seen within that time. The number of entries is bounded (the oldest go first).
Callers that miss the same key at the same moment share one load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


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
