"""Baseline: the plain python-socketio + aiohttp relay a team would write first.

``python -m bench.servers.plain_socketio PORT``. Events as in bench/node/server.mjs:
``join {room}`` (acked) and ``broadcast`` (to the room, the sender excepted).
Library defaults throughout: that is what the comparison is about. A broadcast goes
out in the envelope roomserver's ``presence:state`` has, as bench/node/server.mjs does.
"""

from __future__ import annotations

import sys
from typing import Any

import socketio
from aiohttp import web

USER_ID = "00000000-0000-4000-8000-000000000000"  # as long as roomserver's ids


def create_app() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")
    rooms: dict[str, str] = {}

    async def join(sid: str, data: dict[str, Any]) -> dict[str, bool]:
        rooms[sid] = data["room"]
        await sio.enter_room(sid, data["room"])
        return {"ok": True}

    async def broadcast(sid: str, data: Any) -> None:
        room = rooms.get(sid)
        envelope = {"document_id": room, "user_id": USER_ID, "connection_id": sid, "state": data}
        await sio.emit("broadcast", envelope, room=room, skip_sid=sid)

    async def disconnect(sid: str, reason: str | None = None) -> None:
        rooms.pop(sid, None)

    sio.on("join", join)
    sio.on("broadcast", broadcast)
    sio.on("disconnect", disconnect)
    app = web.Application()
    sio.attach(app)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None)
