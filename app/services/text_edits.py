"""Server-side edits of a document's text, in Python string indices.

pycrdt's ``Text`` counts positions in UTF-8 bytes (Yjs in JavaScript counts UTF-16
units, Python counts code points). An index that is right for ``str`` lands inside
a multi-byte character, or past the intended spot, once non-ASCII text precedes it.
Every server-side edit (REST today, the assistant later) goes through ``apply_edit``,
which converts the positions; nothing else calls ``Text.insert`` or deletes ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

from pycrdt import Text

from app.errors import ValidationFailed


@dataclass(frozen=True, slots=True)
class TextEdit:
    """Replace ``text[start:end]`` with ``insert`` (Python indices, code points)."""

    start: int
    end: int
    insert: str = ""

    @classmethod
    def append(cls, current: str, insert: str) -> TextEdit:
        return cls(len(current), len(current), insert)

    @classmethod
    def replace_all(cls, current: str, insert: str) -> TextEdit:
        return cls(0, len(current), insert)


def utf8_offset(text: str, index: int) -> int:
    """The UTF-8 byte offset of code point ``index`` in ``text``."""
    return len(text[:index].encode("utf-8"))


def apply_edit(text: Text, edit: TextEdit) -> None:
    """Apply ``edit`` to ``text`` in one transaction (one Yjs update)."""
    current = str(text)
    if not 0 <= edit.start <= edit.end <= len(current):
        raise ValidationFailed(
            details=[
                {
                    "field": "start",
                    "message": f"need 0 <= start <= end <= {len(current)} (the text's length)",
                    "type": "range",
                }
            ]
        )
    if edit.start == len(current):
        # The end as yrs counts it. A crafted update can leave text whose count in
        # yrs differs from its Python string's UTF-8 length (a split surrogate pair,
        # docs/protocol.md §6.5): an append converted from the string landed inside
        # the last characters.
        start = end = len(text)
    else:
        start = utf8_offset(current, edit.start)
        end = start + len(current[edit.start : edit.end].encode("utf-8"))
    assert text.doc is not None, "the text must belong to a document"
    with text.doc.transaction():
        if end > start:
            del text[start:end]
        if edit.insert:
            text.insert(start, edit.insert)
