"""ExpiringCache and BatchedLoads (app/services/cache.py): what every connect and join reads."""

from __future__ import annotations

import asyncio

import pytest

from app.services.cache import BatchedLoads, ExpiringCache


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


# --- BatchedLoads: the keys missed at about the same moment, read together ---------------


class Reads:
    """A ``load_many`` that records each batch and holds it until ``release``d."""

    def __init__(self, values: dict[str, int]) -> None:
        self.values = values
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def __call__(self, keys: list[str]) -> dict[str, int]:
        self.batches.append(keys)
        fail, self.fail = self.fail, None  # this read only
        await self.gate.wait()
        if fail is not None:
            raise fail
        return {key: self.values[key] for key in keys if key in self.values}


async def test_keys_asked_for_together_are_read_together() -> None:
    reads = Reads({"a": 1, "b": 2, "c": 3})
    loads: BatchedLoads[str, int] = BatchedLoads(reads)
    found = await asyncio.gather(*(loads.load(key) for key in ["a", "b", "a", "x", "c"]))
    assert found == [1, 2, 1, None, 3]  # None: the read found none
    assert reads.batches == [["a", "b", "x", "c"]]
    assert await loads.load("b") == 2 and reads.batches[-1] == ["b"]  # alone: at once


async def test_keys_asked_for_during_a_read_go_in_the_next_one() -> None:
    reads = Reads({"a": 1, "b": 2})
    loads: BatchedLoads[str, int] = BatchedLoads(reads)
    reads.gate.clear()
    first = asyncio.create_task(loads.load("a"))
    await asyncio.sleep(0.01)
    assert reads.batches == [["a"]]
    # Asked for again after its read started: a change that committed meanwhile may
    # have dropped it from a cache, so it is read again, with what came meanwhile.
    later = [asyncio.create_task(loads.load(key)) for key in ["a", "b", "b"]]
    await asyncio.sleep(0.01)
    assert reads.batches == [["a"]]
    reads.gate.set()
    assert await first == 1
    assert await asyncio.gather(*later) == [1, 2, 2]
    assert reads.batches == [["a"], ["a", "b"]]


async def test_a_batch_holds_at_most_max_keys() -> None:
    reads = Reads({str(i): i for i in range(5)})
    loads: BatchedLoads[str, int] = BatchedLoads(reads, max_keys=2)
    found = await asyncio.gather(*(loads.load(str(i)) for i in range(5)))
    assert found == [0, 1, 2, 3, 4]
    assert reads.batches == [["0", "1"], ["2", "3"], ["4"]]


async def test_a_failed_read_fails_its_callers_and_the_next_read_goes_on() -> None:
    reads = Reads({"a": 1, "b": 2})
    loads: BatchedLoads[str, int] = BatchedLoads(reads)
    reads.gate.clear()
    reads.fail = LookupError("the database is down")
    failing = [asyncio.create_task(loads.load(key)) for key in ["a", "b"]]
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(loads.load("b"))
    await asyncio.sleep(0)
    reads.gate.set()
    for task in failing:
        with pytest.raises(LookupError):
            await task
    assert await waiting == 2  # the next read
    assert reads.batches == [["a", "b"], ["b"]]


async def test_a_cancelled_caller_does_not_cancel_the_others_sharing_its_read() -> None:
    reads = Reads({"a": 1})
    loads: BatchedLoads[str, int] = BatchedLoads(reads)
    reads.gate.clear()
    callers = [asyncio.create_task(loads.load("a")) for _ in range(2)]
    await asyncio.sleep(0.01)
    callers[0].cancel()
    reads.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await callers[0]
    assert await callers[1] == 1 and reads.batches == [["a"]]
