"""Argon2id password hashing, run in worker threads, a bounded number at a time.

Each hash costs ~50 ms of a core and 64 MiB (``argon2id``'s settings' defaults):
``concurrency`` run at once and ``queue`` more may wait their turn; past that the
caller is refused at once (``ServiceUnavailable`` with a retry-after) rather than the
server queueing work it cannot finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.config import Settings
from app.errors import ServiceUnavailable

T = TypeVar("T")
BUSY_RETRY_AFTER_SECONDS = 1
# OWASP's Argon2id options, from 46 MiB with 1 pass to 7 MiB with 5, each spend at
# least this many KiB-passes: a cheaper hash is weaker than it advises.
OWASP_LEAST_KIB_PASSES = 7 * 1024 * 5

log = logging.getLogger(__name__)


def argon2id(*, time_cost: int, memory_kib: int) -> PasswordHasher:
    """An Argon2id hasher of ``time_cost`` passes over ``memory_kib`` KiB, warned of
    below OWASP's minimum."""
    if time_cost * memory_kib < OWASP_LEAST_KIB_PASSES:
        log.warning(
            "password hashes cost %d pass(es) over %d KiB, less than OWASP advises: "
            "fit for tests, not for real passwords",
            time_cost,
            memory_kib,
        )
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib)


def password_hasher(settings: Settings) -> PasswordHasher:
    """``argon2id`` of ``PASSWORD_HASH_TIME_COST`` and ``PASSWORD_HASH_MEMORY_KIB``."""
    return argon2id(
        time_cost=settings.password_hash_time_cost, memory_kib=settings.password_hash_memory_kib
    )


class Passwords:
    def __init__(
        self, hasher: PasswordHasher | None = None, *, concurrency: int = 2, queue: int = 32
    ) -> None:
        self._hasher = hasher or PasswordHasher()
        # Verified against when the username is unknown, so that a login for a
        # missing user costs the same time as one with a wrong password.
        self._dummy_hash = self._hasher.hash("not a real password")
        self._slots = asyncio.Semaphore(concurrency)
        self._admitted = 0  # running or waiting
        self._max_admitted = concurrency + queue

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        return await self._run(self._verify, password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)

    async def _run(self, work: Callable[..., T], *args: object) -> T:
        if self._admitted >= self._max_admitted:
            error = ServiceUnavailable("too many sign-ins at once; try again shortly")
            error.retry_after = BUSY_RETRY_AFTER_SECONDS
            raise error
        self._admitted += 1
        try:
            async with self._slots:
                return await asyncio.to_thread(work, *args)
        finally:
            self._admitted -= 1

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash or self._dummy_hash, password) and bool(
                password_hash
            )
        except (VerificationError, InvalidHashError):
            return False
