"""What bounds the assistant: its limits from the settings, the daily token budgets
with the replies in flight held at their worst case, the prices its usage is costed
at, and the circuit breaker that fails fast while the model's service fails."""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from app.errors import AiBudgetExceeded, AiServerBudgetExceeded, AiUnavailable
from app.services.responders import Prompt, Usage, estimate_tokens

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
    daily_tokens: int
    deadline: float
    max_retries: int
    retry_max_wait: float
    chunk_interval: float
    chunk_chars: int
    breaker_failures: int
    breaker_reset: float
    prices: Prices
    sources_chars: int = 0  # the retrieved passages that go with a question, at most
    prompts_at_once: int = 4  # replies building their prompts at the same time, at most

    def most_tokens(self, asked: str) -> int:
        """The most a reply may cost before its prompt is built: the largest prompt these
        limits allow around ``asked`` (the question and who asks it), estimated as
        ``estimate_tokens`` does, and every output token it may have."""
        chars = (
            len(self.system_prompt)
            + self.document_chars
            + self.sources_chars
            + 4 * self.context_tokens  # a line's estimate is at least its length / 4
            + len(asked)
            + PROMPT_FRAME_CHARS
        )
        return (chars + 3) // 4 + self.max_tokens

    def worst_case(self, prompt: Prompt) -> int:
        """What a reply to ``prompt`` may cost: its estimated input, all its output."""
        return (
            estimate_tokens(prompt.system)
            + sum(estimate_tokens(message["content"]) for message in prompt.messages)
            + prompt.max_tokens
        )


# Characters of a prompt besides the system prompt, the document, the chat lines and the
# question: its tags, the note of what was cut and the newlines between up to 200 lines.
PROMPT_FRAME_CHARS = 512


@dataclass(eq=False, slots=True)
class Hold:
    """What one reply may still cost, held against the daily budgets from its ask until
    its real usage is recorded. ``ahead_for_user`` and ``ahead``: what the user's and
    everyone's replies held when it was taken, itself not included."""

    user_id: uuid.UUID
    tokens: int
    ahead_for_user: int
    ahead: int


class TokenBudgets:
    """The daily token budgets (UTC days), one per user and one for the server, with
    the replies in flight on this process counted at their worst case.

    What was spent is read from the usage table by the caller. A reply's hold is taken
    before that read and dropped only after its usage is committed, and an ask is checked
    against the holds as they were when it took its own: a reply that ends meanwhile is
    counted twice for a moment but never missed, and of two asks at once the later one
    counts the earlier one's hold. Holds live in this process only.
    """

    def __init__(self, *, per_user: int, server: int, holds_end_within: float) -> None:
        self.per_user = per_user
        self.server = server
        self._holds_end_within = holds_end_within  # a reply's deadline
        self._by_user: dict[uuid.UUID, int] = {}
        self._total = 0

    def held(self, user_id: uuid.UUID | None = None) -> int:
        """Tokens held by replies in flight: one user's, or everyone's."""
        return self._total if user_id is None else self._by_user.get(user_id, 0)

    def hold(self, user_id: uuid.UUID, tokens: int) -> Hold:
        hold = Hold(user_id, tokens, self.held(user_id), self._total)
        self._by_user[user_id] = hold.ahead_for_user + tokens
        self._total += tokens
        return hold

    def check(self, hold: Hold, *, spent_by_user: int, spent: int) -> None:
        """Raise ``AiBudgetExceeded`` (the user's budget) or ``AiServerBudgetExceeded``
        unless what was spent today, what was held and ``hold`` fit in each."""
        for error, who, limit, spent_here, ahead in (
            (AiBudgetExceeded, "you", self.per_user, spent_by_user, hold.ahead_for_user),
            (AiServerBudgetExceeded, "the server", self.server, spent, hold.ahead),
        ):
            left = limit - spent_here - ahead
            if hold.tokens <= left:
                continue
            details = {
                "limit": limit,
                "spent": spent_here,
                "reserved": ahead,
                "left": max(left, 0),
                "needed": hold.tokens,
            }
            whose = "your" if who == "you" else "its"
            message = f"{who} used {spent_here} of {whose} {limit} tokens today"
            if ahead:
                message += f" and replies streaming hold {ahead} more"
            message += f"; a reply may cost up to {hold.tokens}"
            tomorrow = _seconds_to_tomorrow()
            retry_after: float | None
            if hold.tokens > limit:
                retry_after = None  # no day is long enough
            elif spent_here + hold.tokens > limit:
                retry_after = tomorrow
            else:  # the replies streaming are in the way: they end by their deadline
                retry_after = min(tomorrow, math.ceil(self._holds_end_within))
            raise error(message, retry_after=retry_after, details=details)

    def shrink(self, hold: Hold, tokens: int) -> None:
        """Hold no more than ``tokens`` for this reply (never more than before)."""
        cut = hold.tokens - max(tokens, 0)
        if cut <= 0:
            return
        hold.tokens -= cut
        self._total -= cut
        left = self._by_user[hold.user_id] - cut
        if left:
            self._by_user[hold.user_id] = left
        else:
            del self._by_user[hold.user_id]

    def release(self, hold: Hold) -> None:
        """The reply's usage is recorded (or never will be): drop its hold. Idempotent."""
        self.shrink(hold, 0)


def _seconds_to_tomorrow() -> int:
    now = datetime.now(UTC)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((tomorrow - now).total_seconds()))


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
