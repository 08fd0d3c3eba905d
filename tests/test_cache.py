"""ExpiringCache (app/services/cache.py): what every connect and join reads."""

from __future__ import annotations

import asyncio

import pytest

from app.services.cache import ExpiringCache


async def test_entries_expire_and_the_oldest_go_past_the_bound() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(ttl=0.05, max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, 2, 3)
    await asyncio.sleep(0.06)
    assert cache.get("b") is None and len(cache) == 1


async def test_callers_missing_one_key_share_one_load() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(ttl=60, max_entries=10)
    loads = 0
    gate = asyncio.Event()

    async def load() -> int:
        nonlocal loads
        loads += 1
        await gate.wait()
        return 7

    waiting = [asyncio.create_task(cache.get_or_load("k", load)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiting) == [7] * 5 and loads == 1
    assert await cache.get_or_load("k", load) == 7 and loads == 1


async def test_a_failed_load_fails_its_sharers_and_is_not_kept() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(ttl=60, max_entries=10)
    gate = asyncio.Event()

    async def load() -> int:
        await gate.wait()
        raise LookupError("no such user")

    waiting = [asyncio.create_task(cache.get_or_load("k", load)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    for task in waiting:
        with pytest.raises(LookupError):
            await task
    assert cache.get("k") is None


async def test_a_value_dropped_while_it_loaded_is_not_kept() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(ttl=60, max_entries=10)
    gate = asyncio.Event()

    async def load() -> int:
        await gate.wait()
        return 1  # read before the change that drops it

    loading = asyncio.create_task(cache.get_or_load("k", load))
    await asyncio.sleep(0)
    cache.drop("k")
    gate.set()
    assert await loading == 1
    assert cache.get("k") is None


async def test_a_cancelled_loader_does_not_cancel_the_callers_sharing_its_load() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(ttl=60, max_entries=10)
    first = asyncio.Event()

    async def slow() -> int:
        first.set()
        await asyncio.sleep(60)
        return 0

    async def quick() -> int:
        return 5

    loader = asyncio.create_task(cache.get_or_load("k", slow))
    await first.wait()
    sharer = asyncio.create_task(cache.get_or_load("k", quick))
    await asyncio.sleep(0)
    loader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loader
    assert await sharer == 5  # it loaded again itself
