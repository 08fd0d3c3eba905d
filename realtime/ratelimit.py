"""The rate limits of what clients send over sockets.

A command class (chat, presence, typing...) has a ``Rate``. Each connection has a
bucket per class, and each user one more per class, ``user_factor`` times as large,
shared by all that user's connections on this process: opening more tabs does not
multiply what a user may send. A refused command costs nothing and is answered
``rate_limited`` with ``retry_after`` seconds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from app.buckets import KeyedBuckets, Rate, TokenBucket, retry_after
from app.errors import RateLimited


class ConnectionBuckets(dict[str, TokenBucket]):
    """One connection's bucket per command class, made on the class's first command:
    a new bucket is full, as one made at connect would be by then, and most
    connections send few classes (a Yjs connection one)."""

    __slots__ = ("_rates",)

    def __init__(self, rates: Mapping[str, Rate]) -> None:
        super().__init__()
        self._rates = rates

    def __missing__(self, kind: str) -> TokenBucket:
        bucket = self[kind] = self._rates[kind].bucket()
        return bucket


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

    def connection_buckets(self) -> ConnectionBuckets:
        """A new connection's own buckets, one per class (made as it is first used)."""
        return ConnectionBuckets(self.rates)

    def wait(
        self, buckets: Mapping[str, TokenBucket], user_id: uuid.UUID, kind: str, cost: float = 1
    ) -> float:
        """Seconds until ``cost`` of class ``kind`` may be spent (0: now)."""
        now = time.monotonic()
        mine, theirs = buckets[kind], self._users[kind].get(user_id)
        return max(mine.wait(cost, now), theirs.wait(cost, now))

    def take(
        self, buckets: Mapping[str, TokenBucket], user_id: uuid.UUID, kind: str, cost: float = 1
    ) -> float:
        """Spend ``cost`` of class ``kind`` from the connection's and the user's
        buckets and return 0, or spend nothing and return the seconds to wait."""
        now = time.monotonic()
        mine, theirs = buckets[kind], self._users[kind].get(user_id)
        wait = max(mine.wait(cost, now), theirs.wait(cost, now))
        if wait == 0:
            mine.spend(cost)
            theirs.spend(cost)
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
