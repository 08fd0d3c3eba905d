"""A token bucket: ``rate`` per second sustained, ``burst`` at once."""

from __future__ import annotations

import time


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
