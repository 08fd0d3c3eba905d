"""What ``GET /api/v1/cluster`` reports: the server processes (nodes) alive, as the
realtime layer knows them (from the nodes' leases in Redis, or this process alone)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: str
    started_at: str  # ISO 8601, UTC
    connections: int  # Socket.IO (Engine.IO) connections of signed-in users
    rooms: int  # document rooms with someone present through this node


class ClusterView(Protocol):
    node_id: str

    async def nodes(self) -> list[NodeStatus]:
        """The nodes alive, oldest first."""
        ...
