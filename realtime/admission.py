"""Which connections a user holds, and the caps on them.

A connection here is an Engine.IO connection (one transport: a browser tab's
socket.io-client ``Manager``), whatever namespaces ride on it: a tab with its chat on
``/`` and its document on ``/yjs|<id>`` holds one. It counts for a user from its
first namespace connect as that user until the transport closes. The cap on all
connections of the process is the engine's (``EngineServer.max_connections``): it
is checked before any user is known. With Redis, ``admit_shared`` counts a user's
connections over every node (``MAX_CONNECTIONS_PER_USER`` holds for the cluster).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Protocol

from app.errors import TooManyConnections, TooManyNamespaces


class SharedCount(Protocol):
    """The users' connections over every node (realtime/cluster/presence.py)."""

    async def admit(self, user_id: uuid.UUID) -> bool: ...

    def released(self, user_id: uuid.UUID) -> None: ...


class Admission:
    def __init__(
        self, *, max_per_user: int, max_namespaces: int, shared: SharedCount | None = None
    ) -> None:
        self.max_per_user = max_per_user
        self.max_namespaces = max_namespaces
        self._by_user: dict[uuid.UUID, set[str]] = {}
        self._by_transport: dict[str, set[uuid.UUID]] = {}
        self._shared = shared
        # (transport, user) counted over the nodes, or being counted.
        self._counted: dict[tuple[str, uuid.UUID], asyncio.Future[bool]] = {}

    def check_namespaces(self, open_namespaces: int) -> None:
        """Refuse one more namespace on a transport that has ``open_namespaces``
        (counting the one connecting)."""
        if open_namespaces > self.max_namespaces:
            raise TooManyNamespaces(
                f"at most {self.max_namespaces} namespaces per connection; close one"
            )

    def admit(self, transport: str, user_id: uuid.UUID) -> None:
        """Count ``transport`` for ``user_id``, or raise ``TooManyConnections``."""
        held = self._by_user.get(user_id, set())
        if transport in held:
            return
        if len(held) >= self.max_per_user:
            raise TooManyConnections(f"at most {self.max_per_user} connections per user; close one")
        self._by_user[user_id] = held
        held.add(transport)
        self._by_transport.setdefault(transport, set()).add(user_id)

    async def admit_shared(self, transport: str, user_id: uuid.UUID) -> None:
        """After ``admit``, with other nodes: count ``transport`` for ``user_id`` over
        them all, or raise ``TooManyConnections`` (and count it nowhere)."""
        if self._shared is None:
            return
        key = (transport, user_id)
        counting = self._counted.get(key)
        if counting is None:
            counting = self._counted[key] = asyncio.ensure_future(self._shared.admit(user_id))
        try:
            admitted = await asyncio.shield(counting)
        except BaseException:
            self._counted.pop(key, None)
            raise
        if not admitted:
            self._counted.pop(key, None)
            self._forget(transport, user_id)
            raise TooManyConnections(f"at most {self.max_per_user} connections per user; close one")
        if transport not in self._by_user.get(user_id, set()) and key in self._counted:
            del self._counted[key]
            self._shared.released(user_id)  # it closed while it was counted

    def counts(self) -> dict[uuid.UUID, int]:
        """Each user's connections here."""
        return {user_id: len(held) for user_id, held in self._by_user.items()}

    def release(self, transport: str) -> None:
        """The transport closed: it no longer counts for anyone."""
        for user_id in self._by_transport.pop(transport, ()):
            self._forget(transport, user_id, by_transport=False)
            counting = self._counted.get((transport, user_id))
            if counting is not None and counting.done():
                del self._counted[(transport, user_id)]
                if not counting.cancelled() and counting.exception() is None and counting.result():
                    assert self._shared is not None
                    self._shared.released(user_id)

    def _forget(self, transport: str, user_id: uuid.UUID, *, by_transport: bool = True) -> None:
        held = self._by_user.get(user_id)
        if held is not None:
            held.discard(transport)
            if not held:
                del self._by_user[user_id]
        if by_transport:
            users = self._by_transport.get(transport)
            if users is not None:
                users.discard(user_id)
                if not users:
                    del self._by_transport[transport]
