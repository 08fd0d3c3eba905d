"""Which connections a user holds, and the caps on them.

A connection here is an Engine.IO connection (one transport: a browser tab's
socket.io-client ``Manager``), whatever namespaces ride on it: a tab with its chat on
``/`` and its document on ``/yjs|<id>`` holds one. It counts for a user from its
first namespace connect as that user until the transport closes. The cap on all
connections of the process is the engine's (``EngineServer.max_connections``): it
is checked before any user is known.
"""

from __future__ import annotations

import uuid

from app.errors import TooManyConnections, TooManyNamespaces


class Admission:
    def __init__(self, *, max_per_user: int, max_namespaces: int) -> None:
        self.max_per_user = max_per_user
        self.max_namespaces = max_namespaces
        self._by_user: dict[uuid.UUID, set[str]] = {}
        self._by_transport: dict[str, set[uuid.UUID]] = {}

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

    def release(self, transport: str) -> None:
        """The transport closed: it no longer counts for anyone."""
        for user_id in self._by_transport.pop(transport, ()):
            held = self._by_user.get(user_id)
            if held is not None:
                held.discard(transport)
                if not held:
                    del self._by_user[user_id]
