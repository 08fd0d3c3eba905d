"""``DocumentClient``: a Yjs document kept in sync with the server, in Python.

It speaks the protocol of the ``y-socket.io`` JavaScript provider (namespace
``/yjs|<document id>``, events ``sync-step-1``, ``sync-update``,
``awareness-update``) on a ``pycrdt.Doc``::

    async with DocumentClient(url, token, document_id) as client:
        await client.synced.wait()
        client.edit(lambda text: text.insert(0, "hello "))  # or any pycrdt change
        print(client.text)

Local changes are sent as they happen. While disconnected they stay in the
document; on reconnect the two sync steps exchange whatever each side lacks, so
nothing edited offline is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import socketio
from pycrdt import Awareness, Doc, Text, TransactionEvent

log = logging.getLogger(__name__)

TEXT_NAME = "content"
REMOTE = "remote"


class DocumentClient:
    def __init__(
        self,
        url: str,
        token: str,
        document_id: str,
        *,
        doc: Doc[Any] | None = None,
        reconnection: bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.document_id = document_id
        self.namespace = f"/yjs|{document_id}"
        self.doc: Doc[Any] = doc if doc is not None else Doc()
        self.awareness = Awareness(self.doc)
        self.awareness.set_local_state(None)
        # Set once the server's state has been applied after each (re)connect.
        self.synced = asyncio.Event()
        self.errors: list[dict[str, Any]] = []
        self.ended: dict[str, Any] | None = None
        self.refused: dict[str, Any] | None = None  # connect_error data: {message, code}
        self.sio = socketio.AsyncClient(reconnection=reconnection)
        self._outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._applying = False
        self._subscription = self.doc.observe(self._local_change)
        on = self.sio.on
        on("connect", self._on_connect, namespace=self.namespace)
        on("disconnect", self._on_disconnect, namespace=self.namespace)
        on("sync-step-1", self._on_sync_step_1, namespace=self.namespace)
        on("sync-update", self._on_sync_update, namespace=self.namespace)
        on("awareness-update", self._on_awareness_update, namespace=self.namespace)
        on("error", self._on_error, namespace=self.namespace)
        on("session:ended", self._on_ended, namespace=self.namespace)
        on("connect_error", self._on_connect_error, namespace=self.namespace)

    @property
    def text(self) -> str:
        return str(self.doc.get(TEXT_NAME, type=Text))

    def edit(self, change: Callable[[Text], None]) -> None:
        """Change the text in one transaction (positions are pycrdt's: UTF-8 bytes)."""
        with self.doc.transaction():
            change(self.doc.get(TEXT_NAME, type=Text))

    def set_awareness(self, state: dict[str, Any] | None) -> None:
        self.awareness.set_local_state(state)
        update = self.awareness.encode_awareness_update([self.doc.client_id])
        self._send("awareness-update", update)

    async def connect(self) -> None:
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())
        await self.sio.connect(
            self.url,
            namespaces=[self.namespace],
            transports=["websocket"],
            auth={"token": self.token},
            wait_timeout=10,
        )

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
        await self.sio.shutdown()  # also stops a reconnection in progress

    async def __aenter__(self) -> DocumentClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the protocol -----------------------------------------------------------------

    async def _on_connect(self) -> None:
        await self.sio.emit(
            "sync-step-1",
            self.doc.get_state(),
            namespace=self.namespace,
            callback=self._on_sync_step_2,
        )
        if self.awareness.get_local_state() is not None:
            update = self.awareness.encode_awareness_update([self.doc.client_id])
            self._send("awareness-update", update)

    def _on_sync_step_2(self, update: bytes) -> None:
        self._apply(update)
        self.synced.set()

    def _on_sync_step_1(self, state_vector: bytes) -> bytes:
        # The server asks for what it lacks; the return value is the ack.
        return self.doc.get_update(state_vector)

    def _on_sync_update(self, update: bytes) -> None:
        self._apply(update)

    def _on_awareness_update(self, update: bytes) -> None:
        self.awareness.apply_awareness_update(update, REMOTE)

    def _on_error(self, error: dict[str, Any]) -> None:
        self.errors.append(error)

    def _on_ended(self, data: dict[str, Any]) -> None:
        self.ended = data

    def _on_connect_error(self, data: Any = None) -> None:
        # The server sends {message, data: {code}}: flattened to {message, code}.
        if isinstance(data, dict):
            extra = data.get("data")
            self.refused = {
                "message": data.get("message"),
                **(extra if isinstance(extra, dict) else {}),
            }
        else:
            self.refused = {"message": str(data)}

    def _on_disconnect(self, reason: str | None = None) -> None:
        self.synced.clear()
        others = [i for i in self.awareness.states if i != self.doc.client_id]
        self.awareness.remove_awareness_states(others, REMOTE)

    def _apply(self, update: bytes) -> None:
        # The observer runs inside apply_update: this marks the change as remote.
        self._applying = True
        try:
            self.doc.apply_update(update)
        finally:
            self._applying = False

    def _local_change(self, event: TransactionEvent) -> None:
        if not self._applying:
            self._send("sync-update", event.update)

    def _send(self, event: str, data: bytes) -> None:
        if self.sio.connected and self.namespace in self.sio.namespaces:
            self._outbox.put_nowait((event, data))
        # Offline: the next connect's sync steps carry the change.

    async def _send_loop(self) -> None:
        # One sender keeps the updates in the order they were made.
        while True:
            event, data = await self._outbox.get()
            try:
                await self.sio.emit(event, data, namespace=self.namespace)
            except socketio.exceptions.BadNamespaceError:
                log.debug("dropped %s while disconnected; the next sync carries it", event)
