"""RoomView keeps one copy per seq, in order, and never lets a stale copy win."""

from __future__ import annotations

from typing import Any

from roomclient import RoomView


def message(seq: int, text: str, *, edited_at: str | None = None, deleted: bool = False) -> Any:
    """A chat message in the wire shape (docs/protocol.md §3.14), the fields that matter here."""
    return {
        "seq": seq,
        "author": {"kind": "user", "id": "u1", "username": "ann"},
        "text": text,
        "metadata": {},
        "edited_at": edited_at,
        "deleted": deleted,
    }


def test_messages_are_kept_in_seq_order_without_duplicates() -> None:
    room = RoomView("doc")
    for seq in (3, 1, 2, 3, 1):
        room.add(message(seq, f"m{seq}"))
    assert [m["seq"] for m in room.messages] == [1, 2, 3]
    assert room.last_seq == 3


def test_a_late_page_does_not_undo_an_edit_or_a_deletion() -> None:
    room = RoomView("doc")
    room.add(message(1, "typo"))
    room.add(message(1, "fixed", edited_at="2026-11-22T05:00:00Z"))
    room.add(message(1, "typo"))  # an older copy, from a catch-up page
    assert room.messages[0]["text"] == "fixed"
    room.add(message(1, "", deleted=True))
    room.add(message(1, "fixed", edited_at="2026-11-22T05:00:00Z"))
    assert room.messages[0]["deleted"] is True


def test_a_reply_assembles_merged_chunks_in_seq_order() -> None:
    # A slow connection gets chunks 3..5 merged into one (first_seq 3, seq 5).
    reply = RoomView("d").reply("r")
    reply.chunk(1, "a")
    reply.chunk(5, "cde", first_seq=3)
    assert reply.text == "a"  # chunk 2 is missing: only what is known in order
    reply.chunk(2, "b")
    reply.chunk(6, "f")
    assert reply.text == "abcdef"
    reply.so_far(4, "abcd")  # a re-join's text so far supersedes what it covers
    reply.chunk(5, "e")
    assert reply.text == "abcdef"
