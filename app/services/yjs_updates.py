"""What a Yjs update is and does, decided without a live document's bookkeeping: is it
well formed, would it change a document, did it take effect whole, apply it without
letting yrs take the process down, build a document from what is stored.

An accepted update is decoded twice on its way in, each time by yrs applying it: to a
scratch document (``check_update``, before it is stored) and to the live one (after).
What else is asked of it is answered from those two: the scratch document's state
vector says whether its encoding needs checking, and the live apply's transaction
whether any of it waits (``took_effect_whole``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pycrdt import Decoder, Doc, Text, TransactionEvent, get_update

from app.errors import InvalidUpdate, UnappliableUpdate, UpdateTooLarge
from storage.repositories.crdt import StoredDocument

# A Yjs v1 update with no structs and an empty delete set.
EMPTY_UPDATE = b"\x00\x00"
# The state vector of a document that holds no struct (yrs lists a client at clock 0
# after some crafted updates: not this).
EMPTY_STATE = b"\x00"

# A Yjs delete set: client -> [(clock, length)].
DeleteSet = dict[int, list[tuple[int, int]]]


@contextlib.contextmanager
def contained(panic: type[InvalidUpdate]) -> Iterator[None]:
    """yrs' failures as coded errors: malformed input as ``InvalidUpdate``, a panic as
    ``panic``. pycrdt raises a panic as pyo3's ``PanicException``, a ``BaseException``
    that ``except Exception`` lets through."""
    try:
        yield
    except (ValueError, IndexError) as exc:
        raise InvalidUpdate() from exc
    except (KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit):
        raise
    except BaseException as exc:
        raise panic() from exc


def check_update(update: bytes, max_bytes: int) -> None:
    """Refuse what is not a well-formed Yjs v1 update within the size limit, and what
    yrs cannot keep: an update whose effect on an empty document does not survive its
    encoding (GC structs past a gap in their client's clocks leave a document whose
    encoding cannot be decoded: tests/data/yjs_fuzz_found.json, gc-past-a-gap)."""
    if len(update) > max_bytes:
        raise UpdateTooLarge(f"the update has {len(update)} bytes; the limit is {max_bytes}")
    # Decoding happens entirely before integration: a scratch document is enough to
    # tell a well-formed update (its dependencies may be missing).
    scratch: Doc[Any] = Doc()
    with contained(InvalidUpdate):
        scratch.apply_update(update)
        if scratch.get_state() == EMPTY_STATE:
            # Nothing of it was integrated (an edit of existing content waits here for
            # that content, a deletion for its items): the scratch document is empty,
            # and so is its encoding. No encoding to check: no second decode.
            return
        encoded = scratch.get_update()
    if not rebuilds(scratch, encoded):
        raise InvalidUpdate("the update cannot be stored faithfully")


def apply_contained(doc: Doc[Any], update: bytes) -> None:
    """``doc.apply_update``, with a panic turned into ``UnappliableUpdate``: a crafted
    update (well formed, so it passes ``check_update``) can make yrs panic when it
    meets real content. The document it panicked in may be half changed: callers
    rebuild it."""
    with contained(UnappliableUpdate):
        doc.apply_update(update)


def build_document(stored: StoredDocument) -> tuple[Doc[Any], list[int]]:
    """A document from its stored state, and the ids of the stored updates that could
    not be applied or not even decoded (left out: nothing stored may make a document
    unloadable; earlier versions stored merged updates, which can be either)."""
    skipped: set[int] = set()
    while True:
        doc: Doc[Any] = Doc()
        current: int | None = None
        try:
            with doc.transaction():
                if stored.snapshot is not None:
                    apply_contained(doc, stored.snapshot)
                for current, update in stored.updates:
                    if current not in skipped:
                        apply_contained(doc, update)
        except InvalidUpdate:
            if current is None or current in skipped:
                raise  # the snapshot itself: nothing to leave out
            skipped.add(current)  # and start again: the half-changed doc is dropped
            continue
        return doc, sorted(skipped)


def rebuilds(doc: Doc[Any], encoded: bytes, text_name: str | None = None) -> bool:
    """Whether ``encoded``, ``doc.get_update()``, builds ``doc`` again: its state vector,
    and the text ``text_name`` if given. yrs can fail that: after an update that splits
    a string inside a UTF-16 surrogate pair, items are missing or shifted in the
    document's encoding (tests/data/yjs_fuzz_found.json, *-surrogate-pair)."""
    copy: Doc[Any] = Doc()
    try:
        apply_contained(copy, encoded)
    except InvalidUpdate:
        return False
    if state_vector(copy.get_state()) != state_vector(doc.get_state()):
        return False
    if text_name is None:
        return True
    return str(copy.get(text_name, type=Text)) == str(doc.get(text_name, type=Text))


def state_vector(encoded: bytes) -> dict[int, int]:
    """A Yjs state vector as client -> clock, without clients at clock 0 (yrs writes its
    clients in no fixed order, and may list one it has nothing of)."""
    decoder = Decoder(encoded)
    clocks: dict[int, int] = {}
    for _ in range(decoder.read_var_uint()):
        client = decoder.read_var_uint()
        clocks[client] = decoder.read_var_uint()
    return {client: clock for client, clock in clocks.items() if clock}


def would_change(
    doc: Doc[Any], update: bytes, deleted: Callable[[], DeleteSet] | None = None
) -> bool:
    """Whether applying ``update`` would change ``doc``, decided from the update and
    the document's state vector and delete set (a copy of the document per update made
    a viewer's keystrokes cost its whole size). ``deleted``: the document's delete set
    (``delete_set_of``), if its caller keeps it.

    A client always answers a sync request with its whole delete set, so even a
    viewer's answer is rarely empty; only what it adds is an edit: structs the
    document lacks, or deletions it has not made (of its items, or of items it has yet
    to receive, which yrs would keep and apply on their arrival).
    """
    if update == EMPTY_UPDATE:
        return False
    deletes = _deletes_past(update, doc.get_state())
    if deletes is None:
        return True  # structs the document lacks
    if not deletes:
        return False
    have = deleted() if deleted is not None else delete_set_of(doc)
    return any(
        not _covered(start, length, have.get(client, ()))
        for client, ranges in deletes.items()
        for start, length in ranges
    )


def delete_set_of(doc: Doc[Any]) -> DeleteSet:
    """The document's delete set (its encoding against its own state vector is an
    update of no structs, "00", and then it): a walk of the whole document."""
    return _read_delete_set(Decoder(doc.get_update(doc.get_state())[1:]))


def took_effect_whole(update: bytes, event: TransactionEvent) -> bool:
    """Whether all of ``update`` took effect in the transaction that applied it, told
    from the transaction (``event``, read in its observer) without decoding ``update``
    again: if its structs are the ones the transaction integrated, and its deletions
    the ones it made, nothing of it waits for a dependency. False means: ask
    ``waits_in``.

    The transaction's update is the same bytes for an ordinary edit, but for its
    delete set, which yrs writes in another client order than Yjs (a deletion across
    several authors' text): compared as sets then.
    """
    change: bytes = event.update
    if change == update:
        return True
    # pycrdt 0.14's stub leaves ``delete_set`` out; the event has it (its encoding).
    deleted: bytes = event.delete_set  # type: ignore[attr-defined]
    structs = len(change) - len(deleted)
    # The struct section's bytes alike: the same header (clients, structs per
    # client), so the same structs and the same end; what follows is each's deletions.
    if (
        structs < 1
        or change[structs:] != deleted
        or update[:structs] != change[:structs]
        or len(update) <= structs
    ):
        return False
    try:
        rest = Decoder(update[structs:])
        theirs = _read_delete_set(rest)
        if rest.length:
            return False
        made = _read_delete_set(Decoder(deleted))
    except (IndexError, RuntimeError):
        return False
    return _ranges(theirs) == _ranges(made)


def _ranges(deletes: DeleteSet) -> dict[int, list[tuple[int, int]]]:
    return {client: sorted(ranges) for client, ranges in deletes.items() if ranges}


def waits_in(doc: Doc[Any], update: bytes) -> bool:
    """Whether part of ``update``, applied to ``doc``, still waits there for a
    dependency: structs past the document's clock for their client, or deletions of
    items it does not have yet. yrs keeps those aside and leaves them out of the
    document's encoding, so a snapshot alone would lose them."""
    have = doc.get_state()
    try:
        deletes = _deletes_past(update, have)
    except InvalidUpdate:
        return False  # not decodable: it was never applied, nothing of it waits
    if deletes is None:
        return True
    clocks = state_vector(have)
    return any(
        start + length > clocks.get(client, 0)
        for client, ranges in deletes.items()
        for start, length in ranges
    )


def _deletes_past(update: bytes, state: bytes) -> DeleteSet | None:
    """None if ``update`` has structs past the state vector ``state``; otherwise its
    delete set (a diff keeps an update's whole delete set)."""
    with contained(InvalidUpdate):
        decoder = Decoder(get_update(update, state))
        if decoder.read_var_uint() > 0:
            return None
        return _read_delete_set(decoder)


def _read_delete_set(decoder: Decoder) -> DeleteSet:
    """A Yjs v1 delete set: client -> [(clock, length)]."""
    deletes: DeleteSet = {}
    for _ in range(decoder.read_var_uint()):
        client = decoder.read_var_uint()
        ranges = deletes.setdefault(client, [])
        for _ in range(decoder.read_var_uint()):
            ranges.append((decoder.read_var_uint(), decoder.read_var_uint()))
    return deletes


def _covered(start: int, length: int, ranges: Iterable[tuple[int, int]]) -> bool:
    """Whether ``[start, start + length)`` lies within the union of ``ranges``."""
    end = start + length
    for clock, size in sorted(ranges):
        if clock > start:
            return False
        start = max(start, clock + size)
        if start >= end:
            return True
    return start >= end
