"""How two waiting events of a mergeable class become one (docs/protocol.md §5.10).

A broadcast that finds many connections behind finds most of them holding the same
waiting event (the previous broadcast, or the same merge of earlier ones): the pair
is merged once, and the one merged event, encoded once, goes to all of them. For Yjs
updates that is one ``merge_updates`` (a decode of both) per broadcast, not one per
connection behind.
"""

from __future__ import annotations

from pycrdt import Decoder, Encoder, merge_updates

from app.events import EventClass
from realtime.delivery.events import Event

# The merges made with the newest event merged: id(older) -> (older, newer, merged).
# Only one newer event's: a broadcast reaches every connection in one pass, and the
# events are held so that their ids stay theirs.
_merged: dict[int, tuple[Event, Event, Event]] = {}


def merge(older: Event, newer: Event) -> Event:
    """One event that tells a late reader what ``older`` then ``newer`` would have;
    the same event for every connection that merges the same two."""
    known = _merged.get(id(older))
    if known is not None and known[0] is older and known[1] is newer:
        return known[2]
    merged = _merge(older, newer)
    if _merged and next(iter(_merged.values()))[1] is not newer:
        _merged.clear()
    _merged[id(older)] = (older, newer, merged)
    return merged


def _merge(older: Event, newer: Event) -> Event:
    kind = newer.kind
    if kind is EventClass.AI_CHUNK:
        data = dict(newer.data)
        data["text"] = older.data["text"] + newer.data["text"]
        # The merged chunk stands for seqs first_seq..seq of the reply.
        data["first_seq"] = older.data.get("first_seq", older.data["seq"])
        return Event(newer.name, data, kind, newer.key)
    if kind is EventClass.DOCUMENT:
        return Event(newer.name, merge_updates(older.data, newer.data), kind, newer.key)
    if kind is EventClass.AWARENESS:
        return Event(newer.name, merge_awareness(older.data, newer.data), kind, newer.key)
    raise ValueError(f"{kind.value} events are not merged")


def merge_awareness(older: bytes, newer: bytes) -> bytes:
    """Two Yjs awareness updates as one: per client id, the entry with the higher clock
    (the newer one on a tie, as y-protocols applies them in order)."""
    entries: dict[int, tuple[int, str]] = {}
    for update in (older, newer):
        decoder = Decoder(update)
        for _ in range(decoder.read_var_uint()):
            client_id = decoder.read_var_uint()
            clock = decoder.read_var_uint()
            state = decoder.read_var_string()
            known = entries.get(client_id)
            if known is None or clock >= known[0]:
                entries[client_id] = (clock, state)
    encoder = Encoder()
    encoder.write_var_uint(len(entries))
    for client_id, (clock, state) in entries.items():
        encoder.write_var_uint(client_id)
        encoder.write_var_uint(clock)
        encoder.write_var_string(state)
    return encoder.to_bytes()
