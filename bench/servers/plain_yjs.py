"""Baseline: a plain y-socket.io relay on python-socketio + pycrdt, nothing stored.

``python -m bench.servers.plain_yjs PORT``. The protocol of the ``y-socket.io`` server
(1.1.3, ``src/server/y-socket-io.ts``) as a team would first write it in Python: one
``pycrdt.Doc`` per namespace ``/yjs|<id>`` kept in memory, no authentication, no
validation, no limits, no persistence. On connect it asks for what it lacks
(``sync-step-1`` with an ack) and sends the awareness states; ``sync-step-1`` from a
client is answered with the update the client lacks; ``sync-update`` is applied and
relayed as received to the namespace's other connections; ``awareness-update`` is
applied and relayed. Library defaults throughout.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import socketio
from aiohttp import web
from pycrdt import Awareness, Doc

PREFIX = "/yjs|"


def create_app() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*", namespaces="*")
    documents: dict[str, tuple[Doc[Any], Awareness]] = {}
    tasks: set[asyncio.Task[None]] = set()

    def document(namespace: str) -> tuple[Doc[Any], Awareness]:
        if namespace not in documents:
            doc: Doc[Any] = Doc()
            awareness = Awareness(doc)
            awareness.set_local_state(None)
            documents[namespace] = (doc, awareness)
        return documents[namespace]

    async def start_sync(namespace: str, sid: str) -> None:
        doc, awareness = document(namespace)

        def answered(*args: Any) -> None:
            if args and isinstance(args[0], bytes):
                doc.apply_update(args[0])

        await sio.emit(
            "sync-step-1", doc.get_state(), to=sid, namespace=namespace, callback=answered
        )
        await sio.emit(
            "awareness-update",
            awareness.encode_awareness_update(list(awareness.states)),
            to=sid,
            namespace=namespace,
        )

    async def connect(namespace: str, sid: str, environ: Any, auth: Any = None) -> bool:
        if not namespace.startswith(PREFIX):
            return False
        # The CONNECT packet goes out when this returns; the sync starts after it.
        task = asyncio.get_running_loop().create_task(start_sync(namespace, sid))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return True

    async def sync_step_1(namespace: str, sid: str, state_vector: bytes) -> bytes:
        doc, _ = document(namespace)
        return doc.get_update(state_vector)

    async def sync_update(namespace: str, sid: str, update: bytes) -> None:
        doc, _ = document(namespace)
        doc.apply_update(update)
        await sio.emit("sync-update", update, namespace=namespace, skip_sid=sid)

    async def awareness_update(namespace: str, sid: str, update: bytes) -> None:
        _, awareness = document(namespace)
        awareness.apply_awareness_update(update, sid)
        await sio.emit("awareness-update", update, namespace=namespace, skip_sid=sid)

    sio.on("connect", connect, namespace="*")
    sio.on("sync-step-1", sync_step_1, namespace="*")
    sio.on("sync-update", sync_update, namespace="*")
    sio.on("awareness-update", awareness_update, namespace="*")
    app = web.Application()
    sio.attach(app)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None)
