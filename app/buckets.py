"""Token buckets: a rate per second sustained, a burst at once; one per key where
many keys (users, client addresses) each get their own."""

from __future__ import annotations

import math
import time
from collections.abc import Hashable
from dataclasses import dataclass


class TokenBucket:
    # Every connection has its own (realtime/ratelimit.py): no __dict__ each.
    __slots__ = ("_tokens", "_updated", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def _refill(self, now: float) -> None:
        tokens = self._tokens + (now - self._updated) * self.rate
        self._tokens = tokens if tokens < self.burst else self.burst
        self._updated = now

    def take(self, tokens: float = 1) -> bool:
        """Spend ``tokens`` (at most ``burst`` are ever asked) if there are that many."""
        tokens = min(tokens, self.burst)
        self._refill(time.monotonic())
        if self._tokens >= tokens:
            self._tokens -= tokens
            return True
        return False

    def spend(self, tokens: float = 1) -> None:
        """Spend ``tokens`` that ``wait`` just found there (no second refill)."""
        self._tokens -= tokens if tokens < self.burst else self.burst

    def wait(self, tokens: float = 1, now: float | None = None) -> float:
        """Seconds until ``tokens`` are available; ``now``: ``time.monotonic()`` read
        already (by a caller asking several buckets at once)."""
        self._refill(time.monotonic() if now is None else now)
        short = (tokens if tokens < self.burst else self.burst) - self._tokens
        return short / self.rate if short > 0 else 0.0

    @property
    def full(self) -> bool:
        self._refill(time.monotonic())
        return self._tokens >= self.burst


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    burst: int

    def bucket(self, factor: float = 1) -> TokenBucket:
        return TokenBucket(self.per_second * factor, max(1, round(self.burst * factor)))


class KeyedBuckets:
    """A bucket per key (a user, a client address...), forgotten once it is full again:
    a key that stopped sending costs nothing after ``burst / rate`` seconds."""

    def __init__(self, rate: Rate, factor: float = 1) -> None:
        self.rate = rate
        self.factor = factor
        self._buckets: dict[Hashable, TokenBucket] = {}
        self._prune_at = 1024

    def get(self, key: Hashable) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune()
            bucket = self._buckets[key] = self.rate.bucket(self.factor)
        return bucket

    def _prune(self) -> None:
        # Amortised: the table is walked once each time it doubles since the last walk.
        self._buckets = {key: bucket for key, bucket in self._buckets.items() if not bucket.full}
        self._prune_at = max(1024, 2 * len(self._buckets))


def retry_after(seconds: float) -> float:
    """A client-facing wait: whole milliseconds, never zero."""
    return max(0.001, math.ceil(seconds * 1000) / 1000)
