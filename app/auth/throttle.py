"""Throttles on signing in and registering, and the client address they are keyed by.

Password hashing is the most expensive thing an anonymous client can ask for (Argon2id:
~50 ms of a core and 64 MiB each), and guessing passwords is the attack it exists
against. So: sign-ins are limited per client address; wrong passwords per username
(five in a row, then one a minute by default); registrations per address. Each is a
token bucket (``app.buckets``) in this process; a refusal is ``RateLimited`` with the
seconds until a retry would pass, and it costs no hashing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from app.buckets import KeyedBuckets, Rate, TokenBucket
from app.buckets import retry_after as rounded
from app.errors import RateLimited

Network = IPv4Network | IPv6Network


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the
    last address in ``X-Forwarded-For`` that is not one (proxies append what they
    saw, so entries left of the first untrusted one may be forged by the client)."""
    address = peer or ""
    if not trusted or not _trusted(address, trusted) or not forwarded_for:
        return address
    for hop in reversed([part.strip() for part in forwarded_for.split(",")]):
        address = hop
        if not _trusted(hop, trusted):
            break
    return address


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        parsed: IPv4Address | IPv6Address = ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in trusted)


class _Turn:
    """The sign-ins of one username: checked one at a time."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class SignInThrottle:
    def __init__(
        self, *, per_address: Rate, failures_per_username: Rate, registrations: Rate
    ) -> None:
        self._attempts = KeyedBuckets(per_address)
        self._failures = KeyedBuckets(failures_per_username)
        self._registrations = KeyedBuckets(registrations)
        # Usernames with a sign-in being checked (and those waiting their turn).
        self._checking: dict[str, _Turn] = {}

    @contextlib.asynccontextmanager
    async def login(self, address: str, username: str) -> AsyncIterator[Callable[[], None]]:
        """One sign-in: counted for ``address``, then checked against the username's
        wrong passwords, one sign-in per username at a time (guesses sent at once are
        each judged after the one before was counted; right passwords, which do not
        count, all pass). Yields what to call when the password was wrong."""
        self._spend_attempt(address)
        key = _key(username)
        turn = self._checking.setdefault(key, _Turn())
        turn.users += 1
        try:
            async with turn.lock:
                failures = self._failures.get(key)
                wait = failures.wait()
                if wait > 0:
                    raise _limited("too many wrong passwords for this account", wait)

                def wrong() -> None:
                    failures.take()

                yield wrong
        finally:
            turn.users -= 1
            if not turn.users:
                del self._checking[key]

    def _spend_attempt(self, address: str) -> None:
        _spend(self._attempts.get(address), "too many sign-in attempts from your address")

    def attempt_registration(self, address: str) -> None:
        _spend(self._registrations.get(address), "too many registrations from your address")


def _key(username: str) -> str:
    return username.strip().lower()


def _spend(bucket: TokenBucket, message: str) -> None:
    wait = bucket.wait()
    if wait > 0:
        raise _limited(message, wait)
    bucket.take()


def _limited(message: str, wait: float) -> RateLimited:
    return RateLimited(f"{message}; try again in {math.ceil(wait)} s", retry_after=rounded(wait))
