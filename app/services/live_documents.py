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
latest snapshot plus the log rows it does not cover, done once however many clients
open the document together. A document nobody has open is saved and dropped after
``unload_after`` seconds.

Several nodes (``peers``, realtime/cluster/documents.py): every node that holds a
document in memory, with Yjs clients or only for REST and the assistant, holds a copy.
An update is stored once, by the node that accepted it, which then publishes it with
its log row id to the document's channel; the other nodes apply it to their copy
without storing it, and hand it to their own Yjs clients (the only way updates reach
clients on other nodes: the room relay does not carry them). A node subscribes before
it reads the log at load, so an update is either in what it read or heard after
(applying one twice is harmless); after a Redis outage ``resync`` reads the log rows a
copy lacks and asks its Yjs clients for ``sync-step-1``. A snapshot is taken by one
node at a time (``snapshot_turn``, a Redis lease; an advisory lock in the database as
well), after the copy has caught up with the log, and it deletes exactly
the log rows it covers: a row another node committed meanwhile, even with a lower id,
stays in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any

from pycrdt import Doc, Text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import DocumentTooLarge, InvalidUpdate
from app.events import Broadcaster
from app.services.document_peers import DocumentPeers
from app.services.live_document import (
    MAX_APPLIED,
    MAX_WAITING,
    TEXT_NAME,
    Limits,
    LiveDocument,
    Pending,
    waiting_of,
)
from app.services.text_edits import TextEdit, apply_edit
from app.services.yjs_updates import EMPTY_UPDATE, build_document, check_update, rebuilds
from storage.db import read_session
from storage.repositories import crdt as crdt_repo
from storage.repositories.crdt import StorageInfo, StoredDocument
from storage.update_batches import UpdateWriter

__all__ = ["MAX_WAITING", "TEXT_NAME", "Limits", "LiveDocument", "LiveDocuments"]

log = logging.getLogger(__name__)


class CopyRebuilding(Exception):
    """A stored update could not be applied to this copy, which is rebuilt from the log:
    nothing is made of it meanwhile (a snapshot of it would hold a half-applied update)."""

    def __init__(self, document_id: uuid.UUID) -> None:
        super().__init__(f"document {document_id}: its copy is being rebuilt from the log")


class LiveDocuments:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        broadcaster: Broadcaster,
        limits: Limits,
        *,
        on_change: Callable[[uuid.UUID], None] | None = None,
        peers: DocumentPeers | None = None,
        updates: UpdateWriter | None = None,
    ) -> None:
        """``updates`` appends a batch of updates in one trip
        (storage.update_batches.update_writer; its owner closes it after
        ``close_all``); without it they go through SQLAlchemy."""
        self._sessions = sessions
        self._updates = updates
        self._broadcaster = broadcaster
        self.limits = limits
        # Told of each stored batch that changed a document (its search index, debounced).
        self._on_change = on_change
        self._peers = peers
        self._documents: dict[uuid.UUID, LiveDocument] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        if peers is not None:
            peers.listen(self._heard)

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
            if self._peers is not None:
                # Before the log is read: an update stored elsewhere meanwhile is in
                # what is read, or heard (kept in live._early until the copy is built).
                await self._peers.watch(live.id)
            async with read_session(self._sessions) as session:
                stored = await crdt_repo.load(session, live.id)
            self._build(live, stored)
            if stored.updates:
                # Compact what an earlier process left behind.
                live.unsaved_since = time.monotonic()
                self._schedule_snapshot(live)
        except asyncio.CancelledError:
            # Shutdown: whoever waits for the load stops waiting too.
            self._drop(live)
            live._loaded.cancel()
            raise
        except BaseException as exc:  # a panic of yrs too: waiters must not hang
            # The callers waiting now all see the error; the next open tries again.
            log.exception("could not load document %s", live.id)
            self._drop(live)
            live._loaded.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            live._loaded.exception()  # retrieved: no "never retrieved" warning
            if not isinstance(exc, Exception):
                raise
            return
        early, live._early = live._early, []
        for update_id, update in early:
            self._apply_heard(live, update_id, update)
        live._loaded.set_result(None)
        if live.users == 0:  # everyone who asked gave up while it loaded
            self._unload_later(live)

    def _build(self, live: LiveDocument, stored: StoredDocument) -> None:
        """Make ``live``'s copy what ``stored`` holds."""
        live.doc, skipped = build_document(stored)
        live.waiting = waiting_of(live.doc, stored)
        if skipped:
            log.error(
                "document %s: stored update(s) %s cannot be applied; left out (the "
                "next snapshot drops them from the log)",
                live.id,
                skipped,
            )
        live.applied = {update_id for update_id, _ in stored.updates}
        live.snapshot_id = stored.snapshot_id
        live.last_update_id = max(live.applied, default=None)
        live.size = live.encoded_size()

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
        live = self._documents.get(document_id)
        if live is not None:
            self._drop(live)
            live.cancel_timers()

    def _drop(self, live: LiveDocument) -> None:
        if self._documents.get(live.id) is live:
            del self._documents[live.id]
            if self._peers is not None:
                self._peers.unwatch(live.id)

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
        for live in list(self._documents.values()):
            self._drop(live)

    # --- updates ----------------------------------------------------------------------

    async def submit(self, live: LiveDocument, update: bytes, *, origin: str | None) -> bool:
        """Store ``update``, then apply it and broadcast it to everyone but ``origin``.

        Returns whether it changed the document. Refuses (``AppError``) what is
        malformed or over a limit; a refused update touches nothing.
        """
        check_update(update, self.limits.max_update_bytes)
        if update == EMPTY_UPDATE:
            return False
        limit = self.limits.max_document_bytes
        if live.size + len(update) > limit and live._writer is None:
            # The bound counts every update since the last snapshot of this copy (on
            # a node that only hears a document, since it loaded): measured before
            # refusing.
            live.size = live.encoded_size()
        if live.size + len(update) > limit:
            raise DocumentTooLarge(f"the document would exceed {limit} bytes")
        pending = Pending(update, origin, asyncio.get_running_loop().create_future())
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
                # A snapshot or a rebuild reads the log and this copy as one: never
                # between a batch's commit and its application here (a snapshot's
                # catch-up would apply the batch itself, an update that cannot be
                # applied included, while it is being taken back).
                async with live._log_lock:
                    await self._write_batch(live)
        finally:
            live._writer = None

    async def _write_batch(self, live: LiveDocument) -> None:
        """What is pending, stored in one transaction, then applied and broadcast."""
        batch, live._pending = live._pending, []
        try:
            # A row per update, all in one transaction. Not one merged row:
            # pycrdt's merge_updates, given crafted updates, can return one that
            # cannot be decoded, or one that decodes to another document than
            # the updates applied one by one (found by tests/test_fuzz_yjs.py).
            if self._updates is not None:
                update_ids = await self._updates.append(live.id, [p.update for p in batch])
            else:
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
            return
        live.writes += 1
        if live.unsaved_since is None:
            live.unsaved_since = time.monotonic()
        changed: dict[Pending, tuple[bytes, bool]] = {}
        unappliable: tuple[Pending, InvalidUpdate] | None = None
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
            return
        live.applied.update(update_ids)
        live.last_update_id = max(update_ids[-1], live.last_update_id or 0)
        if self._peers is not None:
            # Every stored update, those that changed nothing here too: a part
            # that waits for a dependency must wait in every copy.
            for update_id, pending in zip(update_ids, batch, strict=True):
                self._peers.publish(live.id, update_id, pending.update)
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

    async def _take_back(
        self,
        live: LiveDocument,
        update_ids: list[int],
        batch: list[Pending],
        bad: Pending,
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
            self._build(live, stored)
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
        bad.done.set_exception(error)
        bad.done.exception()
        live._pending = [p for p in batch if p is not bad] + live._pending

    async def _settle(self, live: LiveDocument) -> None:
        """Wait until no write is in flight."""
        while live._writer is not None:
            await asyncio.shield(live._writer)

    # --- the other nodes' updates -----------------------------------------------------

    def _heard(self, document_id: uuid.UUID, update_id: int, update: bytes) -> None:
        """``DocumentPeers``' listener: an update another node stored."""
        live = self._documents.get(document_id)
        if live is None:
            return  # dropped here since; its unsubscription is on its way
        if not live._loaded.done():
            live._early.append((update_id, update))
        else:
            self._apply_heard(live, update_id, update)

    def _apply_heard(self, live: LiveDocument, update_id: int, update: bytes) -> bool:
        """Apply a stored update to this copy (unless it holds it already) and hand
        what it changed to this node's Yjs clients; False: it could not be applied, and
        the copy is being rebuilt."""
        if update_id in live.applied:
            return True
        if len(live.applied) >= MAX_APPLIED:
            live.applied = set(sorted(live.applied)[MAX_APPLIED // 2 :])  # the newest half
        live.applied.add(update_id)
        live.last_update_id = max(update_id, live.last_update_id or 0)
        return self._integrate(live, update)

    def _integrate(self, live: LiveDocument, update: bytes) -> bool:
        try:
            change, integrated_more = live._apply(update)
        except InvalidUpdate:
            # Applied where it was accepted, refused here: this copy is rebuilt from
            # the database rather than trusted half changed.
            log.exception("document %s: a stored update cannot be applied here", live.id)
            self._spawn(self._rebuild(live))
            return False
        live.size += len(update)
        if change is not None:
            self._broadcaster.document_updated(live.id, update, skip_connection=None)
            if integrated_more:
                self._broadcaster.document_updated(live.id, change, skip_connection=None)
        return True

    async def _rebuild(self, live: LiveDocument) -> None:
        async with live._log_lock:
            try:
                async with read_session(self._sessions) as session:
                    stored = await crdt_repo.load(session, live.id)
            except Exception:
                log.exception("could not rebuild document %s; dropped from memory", live.id)
                self.forget(live.id)
                return
            self._build(live, stored)
        self._broadcaster.document_resync(live.id)

    async def resync(self, document_ids: Iterable[uuid.UUID]) -> None:
        """After a Redis outage (or another node's): the documents held here read the
        log rows (and snapshot) their copies lack, hand what changed to their Yjs
        clients, and ask those clients for ``sync-step-1``. Documents not held here
        are skipped."""
        for document_id in document_ids:
            live = self._documents.get(document_id)
            if live is None or not live._loaded.done():
                continue  # not held here, or loading (it reads the log now)
            try:
                async with live._log_lock, read_session(self._sessions) as session:
                    await self._catch_up(session, live)
            except Exception:
                log.exception("document %s: could not catch up with the log", document_id)
                continue
            self._broadcaster.document_resync(document_id)

    async def _catch_up(self, session: AsyncSession, live: LiveDocument) -> list[int]:
        """Apply to ``live`` the latest snapshot, if this copy was not built from it or
        wrote it, and the log rows it has not applied; returns the ids of every log row
        left (all of which the copy then holds)."""
        latest = await crdt_repo.latest_snapshot_ids(session, live.id)
        if latest is not None and latest[0] != live.snapshot_id:
            # Another node compacted rows this copy may never have heard of.
            snapshot = await crdt_repo.latest_snapshot(session, live.id)
            if snapshot is not None:
                if not self._integrate(live, snapshot.data):
                    raise CopyRebuilding(live.id)
                live.snapshot_id = snapshot.id
        update_ids = await crdt_repo.update_ids(session, live.id)
        missing = [update_id for update_id in update_ids if update_id not in live.applied]
        if missing:
            log.info("document %s: %d update(s) read from the log", live.id, len(missing))
            for update_id, update in await crdt_repo.updates_by_id(session, live.id, missing):
                if not self._apply_heard(live, update_id, update):
                    raise CopyRebuilding(live.id)
        return update_ids

    # --- snapshots --------------------------------------------------------------------

    def _schedule_snapshot(self, live: LiveDocument, delay: float | None = None) -> None:
        if live.unsaved_since is None:
            return
        if live._snapshot_timer is not None:
            live._snapshot_timer.cancel()
        limits = self.limits
        if delay is None:
            deadline = live.unsaved_since + limits.snapshot_max_delay
            delay = max(0.0, min(limits.snapshot_debounce, deadline - time.monotonic()))
        live._snapshot_timer = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self._snapshot(live))
        )

    async def _snapshot(self, live: LiveDocument) -> None:
        if live._snapshot_timer is not None:
            live._snapshot_timer.cancel()
            live._snapshot_timer = None
        if live.unsaved_since is None or live.unfaithful:
            return
        writes = live.writes
        try:
            turn = (
                self._peers.snapshot_turn(live.id)
                if self._peers is not None
                else contextlib.nullcontext(True)
            )
            async with turn as mine:
                if not mine:
                    # Another node is compacting it: what it does not cover is
                    # taken at the next try.
                    if self._documents.get(live.id) is live:
                        self._schedule_snapshot(live, self.limits.snapshot_debounce)
                    return
                # Taken after the lease (a Redis call): writes wait for the
                # database part only.
                async with live._log_lock:
                    if live.unfaithful:  # found by a snapshot that held the lock
                        return
                    saved = await self._write_snapshot(live)
        except Exception:
            log.exception("could not snapshot document %s; will retry", live.id)
            if self._documents.get(live.id) is live:
                self._schedule_snapshot(live)
            return
        if saved is None:
            return  # unfaithful
        if live.writes == writes:
            live.unsaved_since = None
            if live._writer is None:
                live.size = saved
        elif self._documents.get(live.id) is live:
            # Updates landed while it was written: the next snapshot takes them.
            self._schedule_snapshot(live)

    async def _write_snapshot(self, live: LiveDocument) -> int | None:
        """Catch up with the log, then write the copy as the snapshot of exactly the log
        rows it was read with; returns the size the copy is counted at (None: its
        encoding does not rebuild it, and no snapshot is written)."""
        async with self._sessions.begin() as session:
            # One snapshot of a document at a time, whichever node writes it.
            await crdt_repo.lock_for_snapshot(session, live.id)
            covered = await self._catch_up(session, live)
            # Nothing is awaited between reading the copy's state and writing it: the
            # snapshot holds exactly the rows ``covered`` (and what the copy held).
            data = live.doc.get_update()
            waiting = list(live.waiting)
            size = len(data) + sum(map(len, waiting))
            if not covered:
                return size  # nothing to compact: another node's snapshot took it all
            if not rebuilds(live.doc, data, TEXT_NAME):
                # A snapshot would lose what the log has (acknowledged edits among it).
                log.error(
                    "document %s: its encoding does not rebuild it; no snapshot (its log "
                    "is kept whole)",
                    live.id,
                )
                live.unfaithful = True
                return None
            # The snapshot it replaces is in the copy (caught up): it covers that too.
            previous = await crdt_repo.latest_snapshot_ids(session, live.id)
            last = max(covered[-1], previous[1] if previous is not None else 0)
            snapshot_id = await crdt_repo.save_snapshot(
                session, live.id, data, covered, last_update_id=last
            )
            if snapshot_id is None:
                log.warning("document %s has a newer snapshot than this copy", live.id)
                return size
            # Left out of the encoding, kept in the log after the snapshot (a load
            # applies them after it, and they wait again).
            kept = [await crdt_repo.append_update(session, live.id, u) for u in waiting]
        live.snapshot_id = snapshot_id
        live.applied.difference_update(covered)
        live.applied.update(kept)
        return size

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
