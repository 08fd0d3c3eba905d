"""One Yjs document in memory (``LiveDocument``) and the limits that bound it; how it is
kept is ``LiveDocuments``' (live_documents.py)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc, Text, TransactionEvent

from app.errors import InvalidUpdate
from app.services.yjs_updates import (
    DeleteSet,
    apply_contained,
    delete_set_of,
    took_effect_whole,
    waits_in,
    would_change,
)
from storage.repositories.crdt import StoredDocument

log = logging.getLogger(__name__)

# The shared type that holds a document's plain text (REST, the assistant).
# Editors bind to it with ``ydoc.getText("content")``.
TEXT_NAME = "content"
# Updates waiting for a dependency that a document keeps track of (LiveDocument.waiting).
MAX_WAITING = 100
# Log row ids a copy remembers having applied (``LiveDocument.applied``) at most. A node
# that only hears a document never snapshots it, so nothing else bounds them; an id
# forgotten costs at most applying its row again (Yjs applies are idempotent).
MAX_APPLIED = 100_000


@dataclass(frozen=True, slots=True)
class Limits:
    max_update_bytes: int
    max_document_bytes: int
    snapshot_debounce: float
    snapshot_max_delay: float
    unload_after: float


@dataclass(eq=False, slots=True)
class Pending:
    update: bytes
    origin: str | None
    done: asyncio.Future[bool]


@dataclass(eq=False)
class LiveDocument:
    """One document in memory. Read it freely; change it only through ``LiveDocuments``."""

    id: uuid.UUID
    doc: Doc[Any] = field(default_factory=Doc)
    # Connections and requests that have it open.
    users: int = 0
    # An upper bound of the encoded size: exact after loading and after each
    # snapshot, plus the size of every update since.
    size: int = 0
    # The newest log row applied here.
    last_update_id: int | None = None
    # When the first update stored by this process that no snapshot covers yet was
    # stored (None: nothing of this process waits for a snapshot).
    unsaved_since: float | None = None
    # Batches stored by this process (a snapshot started before the last one does
    # not cover it).
    writes: int = 0
    # The log rows applied to this copy that its snapshot (``snapshot_id``, the row of
    # the snapshot it was built from or wrote) does not cover: a catch-up from the log
    # applies only the others, and a snapshot of this copy covers exactly these.
    applied: set[int] = field(default_factory=set)
    snapshot_id: int | None = None
    # Its encoding does not rebuild it (``rebuilds``): no snapshot is written, the log
    # stays whole, and a load replays it.
    unfaithful: bool = False
    # Applied updates of which a part still waits for a dependency (``waits_in``):
    # the document's encoding leaves that part out, so a snapshot keeps them in the log.
    waiting: list[bytes] = field(default_factory=list)
    # The delete set of ``_deleted_of`` (``deleted``), kept until the document changes:
    # a viewer's sync answers are judged against it, and reading it walks the document.
    _deleted: DeleteSet | None = None
    _deleted_of: Doc[Any] | None = None
    _loaded: asyncio.Future[None] = field(init=False)
    _pending: list[Pending] = field(default_factory=list)
    # Updates stored by other nodes (log row id, update), heard while this copy loaded:
    # applied once it is built (those it already holds are skipped).
    _early: list[tuple[int, bytes]] = field(default_factory=list)
    _writer: asyncio.Task[None] | None = None
    _snapshot_timer: asyncio.TimerHandle | None = None
    _unload_timer: asyncio.TimerHandle | None = None
    # Held while the log and this copy are made to agree: a batch of this process
    # stored and applied, a snapshot caught up and written, a rebuild from the log.
    _log_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self._loaded = asyncio.get_running_loop().create_future()

    @property
    def text(self) -> Text:
        text: Text = self.doc.get(TEXT_NAME, type=Text)
        return text

    def state_vector(self) -> bytes:
        return self.doc.get_state()

    def missing_for(self, state_vector: bytes) -> bytes:
        """The update a peer with ``state_vector`` lacks (Yjs ``encodeStateAsUpdate``)."""
        try:
            return self.doc.get_update(state_vector)
        except ValueError as exc:
            raise InvalidUpdate("not a Yjs state vector") from exc

    def encoded_size(self) -> int:
        """Its encoding's size, with what waits (kept in the log beside a snapshot)."""
        return len(self.doc.get_update()) + sum(map(len, self.waiting))

    def would_change(self, update: bytes) -> bool:
        """Whether applying ``update`` would change the document (``would_change``)."""
        return would_change(self.doc, update, self.deleted)

    def deleted(self) -> DeleteSet:
        """The document's delete set, read again only after it changed (or was rebuilt)."""
        if self._deleted is None or self._deleted_of is not self.doc:
            self._deleted, self._deleted_of = delete_set_of(self.doc), self.doc
        return self._deleted

    def cancel_timers(self) -> None:
        for timer in (self._snapshot_timer, self._unload_timer):
            if timer is not None:
                timer.cancel()
        self._snapshot_timer = self._unload_timer = None

    def _apply(self, update: bytes) -> tuple[bytes | None, bool]:
        """Apply ``update``: its transaction's update (None if it changed nothing), and
        whether that is more than ``update``: it supplied a dependency that parts of
        earlier updates waited for, and they were integrated with it."""
        changes: list[bytes] = []
        whole = False

        def seen(event: TransactionEvent) -> None:
            nonlocal whole
            changes.append(event.update)
            # Read here: the event is valid only while its transaction commits.
            whole = took_effect_whole(update, event)

        self._deleted = None
        subscription = self.doc.observe(seen)
        try:
            apply_contained(self.doc, update)
        finally:
            self.doc.unobserve(subscription)
        waited = len(self.waiting)
        if waited:
            self.waiting = [earlier for earlier in self.waiting if waits_in(self.doc, earlier)]
        # The transaction says so for an ordinary edit; otherwise a diff against the
        # document's state (one more decode) tells.
        if not whole and waits_in(self.doc, update):
            self.waiting.append(update)
            if len(self.waiting) > MAX_WAITING:
                # Each is checked again after every update: their number is bounded.
                # The oldest is let go: the next snapshot leaves it out of the log.
                log.warning("document %s: over %d updates wait; one let go", self.id, MAX_WAITING)
                del self.waiting[0]
        return (changes[-1] if changes else None), len(self.waiting) < waited


def waiting_of(doc: Doc[Any], stored: StoredDocument) -> list[bytes]:
    """The stored updates of which a part waits in ``doc`` (built from ``stored``)."""
    return [update for _, update in stored.updates if waits_in(doc, update)]
