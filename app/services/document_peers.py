"""``DocumentPeers``: what ``LiveDocuments`` needs of the other nodes holding a document.

With several nodes (``REDIS_URL`` set) the implementation is realtime/cluster/
documents.py; with one process there is none, and ``LiveDocuments`` works alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

# (document id, log row id, Yjs update): an update another node stored.
Heard = Callable[[uuid.UUID, int, bytes], None]


class DocumentPeers(Protocol):
    def listen(self, heard: Heard) -> None:
        """Updates the other nodes store, of the documents watched here, go to ``heard``."""

    async def watch(self, document_id: uuid.UUID) -> None:
        """Hear the document's updates; returns once every update published from now
        on reaches this node (or, the link being down, at once: the resync after the
        outage reads what was missed)."""

    def unwatch(self, document_id: uuid.UUID) -> None:
        """Stop hearing the document (it left this node's memory)."""

    def publish(self, document_id: uuid.UUID, update_id: int, update: bytes) -> None:
        """Tell the nodes holding the document of an update stored here (log row id)."""

    def snapshot_turn(self, document_id: uuid.UUID) -> AbstractAsyncContextManager[bool]:
        """Held while this node snapshots the document; yields False when another node
        holds it (this node tries again later)."""
