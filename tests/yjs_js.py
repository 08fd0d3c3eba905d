"""Drive the ``y-socket.io`` JavaScript provider (``tests/js/yjs_client.mjs``).

Each ``YjsJsClient`` is one Node process holding one unmodified ``SocketIOProvider``
with its ``Y.Doc``; the driving (JSON lines) is ``NodeProgram``'s, see
``tests/js_client.py``. Positions are the Yjs ones (UTF-16 code units).
"""

from __future__ import annotations

import base64
from typing import Any

from tests.js_client import JS_DIR, NodeProgram


class YjsJsClient(NodeProgram):
    script = JS_DIR / "yjs_client.mjs"
    client_id: int  # the doc's Yjs client id, once connected

    async def connect(
        self, document_id: str, token: str, *, within: float = 10.0
    ) -> dict[str, Any]:
        """Connect the provider and wait for ``synced``: ``{"synced": true, "client_id"}``,
        or ``{"synced": false, "connect_error": {"message", "data"}}``."""
        connected = await self.call(
            "connect", url=self.url, document_id=document_id, token=token, timeout_ms=within * 1000
        )
        if connected["synced"]:
            self.client_id = int(connected["client_id"])
        return connected

    async def synced_as(self, document_id: str, token: str) -> None:
        """Connect, which must succeed."""
        connected = await self.connect(document_id, token)
        assert connected["synced"] is True, (self.name, connected)

    async def insert(self, index: int, text: str) -> str:
        """Insert into the text; the text after."""
        return str((await self.call("insert", index=index, text=text))["text"])

    async def append(self, text: str) -> str:
        """Insert at the end of the text as it is in the Node process at that moment."""
        return str((await self.call("append", text=text))["text"])

    async def delete(self, index: int, length: int) -> str:
        return str((await self.call("delete", index=index, length=length))["text"])

    async def text(self) -> str:
        return str((await self.call("text"))["text"])

    async def wait_text(self, text: str, *, within: float = 10.0) -> str:
        return str((await self.call("wait_text", text=text, timeout_ms=within * 1000))["text"])

    async def disconnect(self) -> None:
        """``provider.disconnect()``: the socket closes and stays closed."""
        assert (await self.call("disconnect"))["connected"] is False

    async def reconnect(self, *, within: float = 10.0) -> dict[str, Any]:
        """``provider.connect()``, waiting for ``synced`` (as ``connect``)."""
        return await self.call("reconnect", timeout_ms=within * 1000)

    async def wait_synced(self, *, within: float = 10.0) -> None:
        await self.call("wait_synced", timeout_ms=within * 1000)

    async def set_awareness(self, state: dict[str, Any] | None) -> None:
        await self.call("set_awareness", state=state)

    async def awareness(self) -> dict[int, Any]:
        """Every awareness state the provider knows, by Yjs client id (its own too)."""
        states: list[list[Any]] = (await self.call("awareness"))["states"]
        return {int(client_id): state for client_id, state in states}

    async def errors(self) -> list[dict[str, Any]]:
        """The ``error`` events received so far."""
        return await self.events("error")

    async def state(self) -> bytes:
        """``Y.encodeStateAsUpdate(doc)``."""
        return base64.b64decode((await self.call("state"))["update"])
