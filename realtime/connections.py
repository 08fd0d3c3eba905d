"""The default-namespace connections of this process, by Socket.IO sid.

Which rooms a connection is in, and which connections a user has, is recorded by
delivery (rooms ``room_of`` and ``user_room_of``), not here.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from app.auth.principal import Principal
from app.buckets import TokenBucket


@dataclass(eq=False)
class Connection:
    sid: str
    principal: Principal
    # Its own rate limit bucket per command class (CommandLimits.connection_buckets).
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    renewal: asyncio.TimerHandle | None = None

    @property
    def user_id(self) -> uuid.UUID:
        return self.principal.user_id

    def cancel_timers(self) -> None:
        if self.renewal is not None:
            self.renewal.cancel()
            self.renewal = None


class Connections:
    def __init__(self) -> None:
        self._by_sid: dict[str, Connection] = {}

    def __len__(self) -> int:
        return len(self._by_sid)

    def add(self, connection: Connection) -> None:
        self._by_sid[connection.sid] = connection

    def remove(self, sid: str) -> Connection | None:
        connection = self._by_sid.pop(sid, None)
        if connection is not None:
            connection.cancel_timers()
        return connection

    def all(self) -> list[Connection]:
        return list(self._by_sid.values())

    def get(self, sid: str) -> Connection | None:
        return self._by_sid.get(sid)
