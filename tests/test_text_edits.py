"""Server-side text edits: Python indices in, the right UTF-8 offsets in pycrdt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Doc, Text

from app.errors import ValidationFailed
from app.services.text_edits import TextEdit, apply_edit, utf8_offset

# One code point each in Python, but 1-4 UTF-8 bytes and 1-2 UTF-16 units; the
# combining accent and the flag's zero-width joiner make multi-code-point letters.
PIECES = ["a", "Z", " ", "é", "e\u0301", "中", "文", "😀", "🏳️\u200d🌈", "\n", "ß"]
texts = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)


def text_of(initial: str) -> Text:
    doc: Doc[Any] = Doc()
    text: Text = doc.get("content", type=Text)
    text += initial
    return text


@pytest.mark.parametrize(
    ("initial", "edit", "expected"),
    [
        ("😀😀", TextEdit(1, 1, "x"), "😀x😀"),  # after a 4-byte emoji
        ("中文字", TextEdit(1, 2, "X"), "中X字"),  # replace a 3-byte character
        ("e\u0301e", TextEdit(1, 1, "|"), "e|\u0301e"),  # between a letter and its accent
        ("e\u0301e", TextEdit(2, 3, ""), "e\u0301"),  # delete after a combining mark
        ("", TextEdit(0, 0, "🌍 hello"), "🌍 hello"),
        ("abc", TextEdit(0, 3, ""), ""),
    ],
)
def test_edits_land_where_python_indices_say(initial: str, edit: TextEdit, expected: str) -> None:
    text = text_of(initial)
    apply_edit(text, edit)
    assert str(text) == expected


@given(initial=texts, insert=texts, a=st.integers(0, 20), b=st.integers(0, 20))
def test_any_edit_matches_python_slicing(initial: str, insert: str, a: int, b: int) -> None:
    start, end = sorted((min(a, len(initial)), min(b, len(initial))))
    text = text_of(initial)
    apply_edit(text, TextEdit(start, end, insert))
    assert str(text) == initial[:start] + insert + initial[end:]


def test_an_edit_is_one_update() -> None:
    text = text_of("hello 🌍")
    assert text.doc is not None
    updates: list[bytes] = []
    text.doc.observe(lambda event: updates.append(event.update))
    apply_edit(text, TextEdit(6, 7, "world"))
    assert len(updates) == 1 and str(text) == "hello world"


@pytest.mark.parametrize("edit", [TextEdit(-1, 0), TextEdit(2, 1), TextEdit(0, 4)])
def test_out_of_range_is_refused_and_changes_nothing(edit: TextEdit) -> None:
    text = text_of("a😀c")
    with pytest.raises(ValidationFailed):
        apply_edit(text, edit)
    assert str(text) == "a😀c"


def test_utf8_offset() -> None:
    assert [utf8_offset("aé中😀", i) for i in range(5)] == [0, 1, 3, 6, 10]


def test_an_append_lands_at_the_end_where_yrs_counts_the_text_otherwise() -> None:
    """A crafted update can leave text whose length in yrs is not its string's UTF-8
    length (tests/data/yjs_text_miscount.json); an append converted from the string
    landed before its last character, inside someone's edit."""
    found = json.loads((Path(__file__).parent / "data" / "yjs_text_miscount.json").read_text())
    doc: Doc[Any] = Doc()
    text: Text = doc.get("content", type=Text)
    for update in found["updates"]:
        doc.apply_update(bytes.fromhex(update))
    before = str(text)
    assert len(text) != len(before.encode("utf-8")), "the case no longer miscounts"
    apply_edit(text, TextEdit.append(before, "<end>"))
    assert str(text) == before + "<end>"
