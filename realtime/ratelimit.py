"""Token buckets, and the rate limits of what clients send over sockets.

A command class (chat, presence, typing...) has a ``Rate``. Each connection has a
bucket per class, and each user one more per class, ``user_factor`` times as large,
shared by all that user's connections on this process: opening more tabs does not
multiply what a user may send. A refused command costs nothing and is answered
``rate_limited`` with ``retry_after`` seconds.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from app.errors import RateLimited


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def take(self, tokens: float = 1) -> bool:
        """Spend ``tokens`` (at most ``burst`` are ever asked) if there are that many."""
        tokens = min(tokens, self.burst)
        self._refill()
        if self._tokens >= tokens:
            self._tokens -= tokens
            return True
        return False

    def wait(self, tokens: float = 1) -> float:
        """Seconds until ``tokens`` are available."""
        self._refill()
        return max(0.0, (min(tokens, self.burst) - self._tokens) / self.rate)

    @property
    def full(self) -> bool:
        self._refill()
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

    def __len__(self) -> int:
        return len(self._buckets)

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


@dataclass(eq=False)
class CommandLimits:
    """The socket rate limits of this process, by command class."""

    rates: Mapping[str, Rate]
    user_factor: float
    _users: dict[str, KeyedBuckets] = field(init=False)

    def __post_init__(self) -> None:
        self._users = {
            name: KeyedBuckets(rate, self.user_factor) for name, rate in self.rates.items()
        }

    def connection_buckets(self) -> dict[str, TokenBucket]:
        """A new connection's own buckets, one per class."""
        return {name: rate.bucket() for name, rate in self.rates.items()}

    def wait(
        self, buckets: Mapping[str, TokenBucket], user_id: uuid.UUID, kind: str, cost: float = 1
    ) -> float:
        """Seconds until ``cost`` of class ``kind`` may be spent (0: now)."""
        return max(buckets[kind].wait(cost), self._users[kind].get(user_id).wait(cost))

    def take(
        self, buckets: Mapping[str, TokenBucket], user_id: uuid.UUID, kind: str, cost: float = 1
    ) -> float:
        """Spend ``cost`` of class ``kind`` from the connection's and the user's
        buckets and return 0, or spend nothing and return the seconds to wait."""
        mine, theirs = buckets[kind], self._users[kind].get(user_id)
        wait = max(mine.wait(cost), theirs.wait(cost))
        if wait == 0:
            mine.take(cost)
            theirs.take(cost)
        return wait

    def admit(
        self, buckets: Mapping[str, TokenBucket], user_id: uuid.UUID, kind: str, cost: float = 1
    ) -> None:
        """``take``, or raise ``RateLimited`` with the wait."""
        wait = self.take(buckets, user_id, kind, cost)
        if wait > 0:
            raise limited(f"too many {kind} messages", wait)


def limited(message: str, wait: float) -> RateLimited:
    return RateLimited(
        f"{message}; try again in {retry_after(wait)} s", retry_after=retry_after(wait)
    )
