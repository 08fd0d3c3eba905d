"""Typing indicators: throttled on the way in, expiring by themselves."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

Key = tuple[uuid.UUID, uuid.UUID]  # (document, user)


@dataclass
class _Typing:
    announced_at: float
    expiry: asyncio.TimerHandle


class TypingIndicators:
    def __init__(
        self, *, timeout: float, throttle: float, on_expired: Callable[[uuid.UUID, uuid.UUID], None]
    ) -> None:
        self._timeout = timeout
        self._throttle = throttle
        self._on_expired = on_expired
        self._active: dict[Key, _Typing] = {}

    def update(self, document_id: uuid.UUID, user_id: uuid.UUID, typing: bool) -> bool:
        """Record the client's state; True when the room should hear about it."""
        key = (document_id, user_id)
        current = self._active.get(key)
        if not typing:
            if current is None:
                return False
            current.expiry.cancel()
            del self._active[key]
            return True
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        expiry = loop.call_later(self._timeout, self._expire, key)
        if current is not None:
            current.expiry.cancel()
            current.expiry = expiry
            if now - current.announced_at < self._throttle:
                return False
            current.announced_at = now
            return True
        self._active[key] = _Typing(announced_at=now, expiry=expiry)
        return True

    def clear(self, document_id: uuid.UUID, user_id: uuid.UUID) -> bool:
        """Forget the user's indicator (they left); True if one was showing."""
        current = self._active.pop((document_id, user_id), None)
        if current is None:
            return False
        current.expiry.cancel()
        return True

    def close(self) -> None:
        for current in self._active.values():
            current.expiry.cancel()
        self._active.clear()

    def _expire(self, key: Key) -> None:
        if self._active.pop(key, None) is not None:
            self._on_expired(*key)
