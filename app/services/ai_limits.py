"""What bounds the assistant: its limits from the settings, the prices its usage is
costed at, and the circuit breaker that fails fast while the model's service fails."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal

from app.errors import AiUnavailable
from app.services.responders import Usage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AssistantLimits:
    max_tokens: int
    system_prompt: str
    context_tokens: int
    document_chars: int
    replies_per_room: int
    replies_per_user: int
    daily_tokens_per_user: int
    deadline: float
    max_retries: int
    retry_max_wait: float
    chunk_interval: float
    chunk_chars: int
    breaker_failures: int
    breaker_reset: float
    prices: Prices


@dataclass(frozen=True, slots=True)
class Prices:
    """US dollars per million tokens."""

    input: Decimal
    output: Decimal
    cache_write: Decimal
    cache_read: Decimal

    def cost(self, usage: Usage) -> Decimal:
        total = (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_creation_input_tokens * self.cache_write
            + usage.cache_read_input_tokens * self.cache_read
        )
        return (total / 1_000_000).quantize(Decimal("0.000001"))


FREE = Prices(Decimal(0), Decimal(0), Decimal(0), Decimal(0))


class CircuitBreaker:
    """Fail fast after ``failures`` failed replies in a row; after ``reset_after``
    seconds let one reply through to try again (closed again if it succeeds)."""

    def __init__(self, failures: int, reset_after: float) -> None:
        self.failures = failures
        self.reset_after = reset_after
        self._in_a_row = 0
        self._opened_at: float | None = None
        self._trial = False

    def check(self) -> None:
        """Raise ``AiUnavailable`` while open; admit one trial once it may close."""
        if self._opened_at is None:
            return
        wait = self._opened_at + self.reset_after - time.monotonic()
        if wait > 0 or self._trial:
            raise AiUnavailable(
                f"the assistant's model service is failing; try again in {max(wait, 1):.0f} s",
            )
        self._trial = True

    def succeeded(self) -> None:
        self._in_a_row, self._opened_at, self._trial = 0, None, False

    def failed(self) -> None:
        self._in_a_row += 1
        self._trial = False
        if self._in_a_row >= self.failures:
            if self._opened_at is None:
                log.warning("assistant circuit open after %d failures", self._in_a_row)
            self._opened_at = time.monotonic()

    def released(self) -> None:
        """A trial that neither succeeded nor failed (cancelled): let another try."""
        self._trial = False
