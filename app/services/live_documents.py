"""Yjs documents held in memory while someone has them open, backed by the update log.

The invariant: the in-memory document is exactly what the database holds. An update
is checked, appended to the log, and only then applied and broadcast; a client that
joins at any moment is sent nothing the database could lose. Updates that arrive
while a write is in flight are committed together in the next one (group commit, a
log row each), so a busy document costs one transaction per round trip, not one per
keystroke.

An update that yrs cannot apply to the document's content (a crafted one can make it
panic) is taken back out of the log, the document is rebuilt from the log, and its
sender is refused; a stored update that cannot be applied is left out at load
(``build_document``): nothing stored makes a document unloadable.

Snapshots compact the log: written when the document has been quiet for
``snapshot_debounce`` seconds, and no later than ``snapshot_max_delay`` after the
first update they cover, but only if the snapshot rebuilds the document
(``rebuilds``): yrs can be left holding a document that its own encoding does not
reproduce, and then the log, replayed at load, is the faithful copy. Loading is the
latest snapshot plus the updates after it, done once however many clients open the
document together. A document nobody has open is saved and dropped after
``unload_after`` seconds.

One process owns a document's memory copy: several nodes editing the same document
need the cluster work (updates relayed between nodes) that is not built yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc, Text, TransactionEvent
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import DocumentTooLarge, InvalidUpdate
from app.events import Broadcaster
from app.services.text_edits import TextEdit, apply_edit
from app.services.yjs_updates import (
    EMPTY_UPDATE,
    DeleteSet,
    apply_contained,
    build_document,
    check_update,
    delete_set_of,
    rebuilds,
    took_effect_whole,
    waits_in,
    would_change,
)
from storage.db import read_session
from storage.repositories import crdt as crdt_repo
from storage.repositories.crdt import StorageInfo, StoredDocument

log = logging.getLogger(__name__)

# The shared type that holds a document's plain text (REST, the assistant).
# Editors bind to it with ``ydoc.getText("content")``.
TEXT_NAME = "content"
# Updates waiting for a dependency that a document keeps track of (LiveDocument.waiting).
MAX_WAITING = 100


@dataclass(frozen=True, slots=True)
class Limits:
    max_update_bytes: int
    max_document_bytes: int
    snapshot_debounce: float
    snapshot_max_delay: float
    unload_after: float


@dataclass(eq=False, slots=True)
class _Pending:
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
    # The newest log row applied here; when the first update that no snapshot
    # covers yet was applied (None: the snapshot covers everything).
    last_update_id: int | None = None
    unsaved_since: float | None = None
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
    _pending: list[_Pending] = field(default_factory=list)
    _writer: asyncio.Task[None] | None = None
    _snapshot_timer: asyncio.TimerHandle | None = None
    _unload_timer: asyncio.TimerHandle | None = None
    _snapshotting: asyncio.Lock = field(default_factory=asyncio.Lock)

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


class LiveDocuments:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        broadcaster: Broadcaster,
        limits: Limits,
        *,
        on_change: Callable[[uuid.UUID], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._broadcaster = broadcaster
        self.limits = limits
        # Told of each stored batch that changed a document (its search index, debounced).
        self._on_change = on_change
        self._documents: dict[uuid.UUID, LiveDocument] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._documents)

    def loaded(self, document_id: uuid.UUID) -> LiveDocument | None:
        return self._documents.get(document_id)

    # --- open and close ---------------------------------------------------------------

    async def open(self, document_id: uuid.UUID) -> LiveDocument:
        """The document, loaded once however many callers ask at the same moment.

        Every ``open`` needs one ``close``.
        """
        live = self._documents.get(document_id)
        if live is None:
            live = LiveDocument(document_id)
            self._documents[document_id] = live
            self._spawn(self._load(live))
        live.users += 1
        if live._unload_timer is not None:
            live._unload_timer.cancel()
            live._unload_timer = None
        try:
            await asyncio.shield(live._loaded)
        except BaseException:
            self.close(live)
            raise
        return live

    def close(self, live: LiveDocument) -> None:
        live.users -= 1
        # Still loading: the load schedules the unload if nobody is left then.
        if live.users == 0 and live._loaded.done():
            self._unload_later(live)

    def _unload_later(self, live: LiveDocument) -> None:
        if self._documents.get(live.id) is not live:
            return  # forgotten, or its load failed
        live._unload_timer = asyncio.get_running_loop().call_later(
            self.limits.unload_after, lambda: self._spawn(self._unload(live))
        )

    @contextlib.asynccontextmanager
    async def opened(self, document_id: uuid.UUID) -> AsyncIterator[LiveDocument]:
        live = await self.open(document_id)
        try:
            yield live
        finally:
            self.close(live)

    async def _load(self, live: LiveDocument) -> None:
        try:
            async with read_session(self._sessions) as session:
                stored = await crdt_repo.load(session, live.id)
            live.doc, skipped = build_document(stored)
            live.waiting = waiting_of(live.doc, stored)
            if skipped:
                log.error(
                    "document %s: stored update(s) %s cannot be applied; left out (the "
                    "next snapshot drops them from the log)",
                    live.id,
                    skipped,
                )
            live.last_update_id = stored.last_update_id
            live.size = live.encoded_size()
            if stored.updates:
                # Compact what an earlier process left behind.
                live.unsaved_since = time.monotonic()
                self._schedule_snapshot(live)
        except asyncio.CancelledError:
            # Shutdown: whoever waits for the load stops waiting too.
            self._documents.pop(live.id, None)
            live._loaded.cancel()
            raise
        except BaseException as exc:  # a panic of yrs too: waiters must not hang
            # The callers waiting now all see the error; the next open tries again.
            log.exception("could not load document %s", live.id)
            self._documents.pop(live.id, None)
            live._loaded.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            live._loaded.exception()  # retrieved: no "never retrieved" warning
            if not isinstance(exc, Exception):
                raise
            return
        live._loaded.set_result(None)
        if live.users == 0:  # everyone who asked gave up while it loaded
            self._unload_later(live)

    async def _unload(self, live: LiveDocument) -> None:
        live._unload_timer = None
        if live.users > 0:
            return
        await self._settle(live)
        # Saving is compaction only (the log holds every update): a failed
        # snapshot does not keep the document in memory.
        await self._snapshot(live)
        if live.users == 0 and live._writer is None and self._documents.get(live.id) is live:
            self.forget(live.id)
            log.debug("unloaded document %s", live.id)

    def forget(self, document_id: uuid.UUID) -> None:
        """Drop a document from memory (a deleted one: without saving it)."""
        live = self._documents.pop(document_id, None)
        if live is not None:
            live.cancel_timers()

    async def close_all(self) -> None:
        """Shutdown: finish the writes in flight and snapshot what is unsaved."""
        for live in list(self._documents.values()):
            if not live._loaded.done():
                continue
            live.cancel_timers()
            await self._settle(live)
            await self._snapshot(live)
        # Loads, unloads, snapshots in flight: awaited, so that none still uses the
        # database when it is closed next (a cancelled SQLite call that outlives its
        # engine never returns).
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._documents.clear()

    # --- updates ----------------------------------------------------------------------

    async def submit(self, live: LiveDocument, update: bytes, *, origin: str | None) -> bool:
        """Store ``update``, then apply it and broadcast it to everyone but ``origin``.

        Returns whether it changed the document. Refuses (``AppError``) what is
        malformed or over a limit; a refused update touches nothing.
        """
        check_update(update, self.limits.max_update_bytes)
        if update == EMPTY_UPDATE:
            return False
        if live.size + len(update) > self.limits.max_document_bytes:
            raise DocumentTooLarge(
                f"the document would exceed {self.limits.max_document_bytes} bytes"
            )
        pending = _Pending(update, origin, asyncio.get_running_loop().create_future())
        live._pending.append(pending)
        live.size += len(update)
        if live._writer is None:
            live._writer = asyncio.get_running_loop().create_task(self._write(live))
        return await asyncio.shield(pending.done)

    async def edit_text(self, document_id: uuid.UUID, make_edit: Callable[[str], TextEdit]) -> str:
        """A server-side edit of the document's text; connected clients see it live.

        ``make_edit`` receives the current text. The edit is made on a copy, as by
        any other client: the live document changes only once the update is stored.
        Returns the text after the edit.
        """
        async with self.opened(document_id) as live:
            copy: Doc[Any] = Doc()
            copy.apply_update(live.doc.get_update())
            before = copy.get_state()
            text = copy.get(TEXT_NAME, type=Text)
            apply_edit(text, make_edit(str(text)))
            await self.submit(live, copy.get_update(before), origin=None)
            return str(live.text)

    async def _write(self, live: LiveDocument) -> None:
        """Commit pending updates in batches; apply and broadcast each batch after."""
        try:
            while live._pending:
                batch, live._pending = live._pending, []
                try:
                    # A row per update, all in one transaction. Not one merged row:
                    # pycrdt's merge_updates, given crafted updates, can return one that
                    # cannot be decoded, or one that decodes to another document than
                    # the updates applied one by one (found by tests/test_fuzz_yjs.py).
                    async with self._sessions.begin() as session:
                        update_ids = [
                            await crdt_repo.append_update(session, live.id, pending.update)
                            for pending in batch
                        ]
                except Exception as exc:
                    log.exception("could not store %d update(s) of %s", len(batch), live.id)
                    live.size -= sum(len(p.update) for p in batch)
                    for pending in batch:
                        pending.done.set_exception(exc)
                        pending.done.exception()
                    continue
                live.last_update_id = update_ids[-1]
                if live.unsaved_since is None:
                    live.unsaved_since = time.monotonic()
                changed: dict[_Pending, tuple[bytes, bool]] = {}
                unappliable: tuple[_Pending, InvalidUpdate] | None = None
                for pending in batch:
                    try:
                        change, integrated_more = live._apply(pending.update)
                    except InvalidUpdate as exc:
                        unappliable = (pending, exc)
                        break
                    if change is not None:
                        changed[pending] = (change, integrated_more)
                if unappliable is not None:
                    await self._take_back(live, update_ids, batch, *unappliable)
                    continue
                for pending in batch:
                    pending.done.set_result(pending in changed)
                for pending, (change, integrated_more) in changed.items():
                    self._broadcaster.document_updated(
                        live.id, pending.update, skip_connection=pending.origin
                    )
                    if integrated_more:
                        # Structs that waited for a dependency this update supplied:
                        # relayed now (when they came they changed nothing, and went
                        # nowhere), to its sender too.
                        self._broadcaster.document_updated(live.id, change, skip_connection=None)
                self._schedule_snapshot(live)
                if changed and self._on_change is not None:
                    self._on_change(live.id)
        finally:
            live._writer = None

    async def _take_back(
        self,
        live: LiveDocument,
        update_ids: list[int],
        batch: list[_Pending],
        bad: _Pending,
        error: InvalidUpdate,
    ) -> None:
        """``bad`` was stored (with the rest of ``batch``, in log rows ``update_ids``) but
        cannot be applied: take the rows back, rebuild the document from the log, refuse
        ``bad``, and queue the rest of the batch to be stored again, first."""
        log.warning("document %s: an update (%d bytes) cannot be applied", live.id, len(bad.update))
        try:
            async with self._sessions.begin() as session:
                for update_id in update_ids:
                    await crdt_repo.delete_update(session, live.id, update_id)
                stored = await crdt_repo.load(session, live.id)
            live.doc, _ = build_document(stored)
            live.waiting = waiting_of(live.doc, stored)
        except Exception as exc:
            # The copy in memory may be half changed and the log could not be read:
            # the batch fails and the next open loads the document afresh.
            log.exception("could not rebuild document %s", live.id)
            self.forget(live.id)
            waiting, live._pending = [*batch, *live._pending], []
            for pending in waiting:
                pending.done.set_exception(exc)
                pending.done.exception()
            return
        live.last_update_id = stored.last_update_id
        live.size = live.encoded_size()
        bad.done.set_exception(error)
        bad.done.exception()
        live._pending = [p for p in batch if p is not bad] + live._pending

    async def _settle(self, live: LiveDocument) -> None:
        """Wait until no write is in flight."""
        while live._writer is not None:
            await asyncio.shield(live._writer)

    # --- snapshots --------------------------------------------------------------------

    def _schedule_snapshot(self, live: LiveDocument) -> None:
        if live.unsaved_since is None:
            return
        if live._snapshot_timer is not None:
            live._snapshot_timer.cancel()
        limits = self.limits
        deadline = live.unsaved_since + limits.snapshot_max_delay
        delay = max(0.0, min(limits.snapshot_debounce, deadline - time.monotonic()))
        live._snapshot_timer = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self._snapshot(live))
        )

    async def _snapshot(self, live: LiveDocument) -> None:
        async with live._snapshotting:
            if live._snapshot_timer is not None:
                live._snapshot_timer.cancel()
                live._snapshot_timer = None
            if live.unsaved_since is None or live.last_update_id is None or live.unfaithful:
                return
            # Nothing is awaited between reading the state and its last update id:
            # the snapshot covers exactly the log rows up to that id.
            data = live.doc.get_update()
            covered = live.last_update_id
            if not rebuilds(live.doc, data, TEXT_NAME):
                # A snapshot would lose what the log has (acknowledged edits among it).
                log.error(
                    "document %s: its encoding does not rebuild it; no snapshot (its log "
                    "is kept whole)",
                    live.id,
                )
                live.unfaithful = True
                return
            waiting = list(live.waiting)
            try:
                async with self._sessions.begin() as session:
                    stored = await crdt_repo.save_snapshot(session, live.id, data, covered)
                    if stored:
                        # Left out of the encoding, kept in the log after the snapshot
                        # (a load applies them after it, and they wait again).
                        for update in waiting:
                            await crdt_repo.append_update(session, live.id, update)
                if not stored:
                    log.warning("document %s has a newer snapshot than this copy", live.id)
            except Exception:
                log.exception("could not snapshot document %s; will retry", live.id)
                if self._documents.get(live.id) is live:
                    self._schedule_snapshot(live)
                return
            if live.last_update_id == covered:
                live.unsaved_since = None
                if live._writer is None:
                    live.size = len(data) + sum(map(len, waiting))
            elif self._documents.get(live.id) is live:
                # Updates landed while it was written: the next snapshot takes them.
                self._schedule_snapshot(live)

    # --- reading ----------------------------------------------------------------------

    async def storage_info(self, document_id: uuid.UUID) -> StorageInfo:
        async with read_session(self._sessions) as session:
            return await crdt_repo.storage_info(session, document_id)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("document task failed", exc_info=task.exception())


def waiting_of(doc: Doc[Any], stored: StoredDocument) -> list[bytes]:
    """The stored updates of which a part waits in ``doc`` (built from ``stored``)."""
    return [update for _, update in stored.updates if waits_in(doc, update)]
