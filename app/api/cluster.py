"""The server processes of the cluster and what each serves (admins only)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from app.api.v1 import api
from app.auth.principal import Principal
from app.errors import Forbidden
from app.keys import CLUSTER


class NodeOut(BaseModel):
    node_id: str = Field(description="the node's id for this run (16 hex digits)")
    started_at: str = Field(description="when the node started (ISO 8601, UTC)")
    connections: int = Field(description="Socket.IO connections of signed-in users")
    rooms: int = Field(description="document rooms with someone present through it")
    this: bool = Field(description="the node that answered")


class ClusterOut(BaseModel):
    nodes: list[NodeOut]


@api.route("GET", "/cluster", response=ClusterOut, errors=(401, 403), tag="admin")
async def get_cluster(request: web.Request, principal: Principal) -> ClusterOut:
    """The nodes alive (their leases in Redis; without Redis, this one), with their
    connections and rooms (admin)."""
    if not principal.is_admin:
        raise Forbidden("admins only")
    view = request.app[CLUSTER]
    return ClusterOut(
        nodes=[
            NodeOut(
                node_id=node.node_id,
                started_at=node.started_at,
                connections=node.connections,
                rooms=node.rooms,
                this=node.node_id == view.node_id,
            )
            for node in await view.nodes()
        ]
    )
