"""Text into passages, and passages into sparse keyword vectors.

Chunks are whole sentences packed up to ``max_chars`` (a long sentence is cut at
words), each sharing its last sentence with the next so that an answer that spans the
seam is in one of them. The sparse vector is a bag of words (lower-cased, stop words
out, a plural's ``s`` off) hashed into Qdrant's index space, each weighted by a
saturated term frequency as BM25 does; Qdrant's IDF modifier supplies the rarity, so
that a rare word that the question shares with a passage counts for more.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n+")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# BM25's k1: how fast repeating a word stops adding to its weight.
K1 = 1.2
STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is
    it its itself just me more most my myself no nor not now of off on once only or other our
    ours ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we
    were what when where which while who whom why will with would you your yours yourself
    yourselves""".split()
)


@dataclass(frozen=True, slots=True)
class SparseVector:
    indices: list[int]
    values: list[float]


def chunks(text: str, *, max_chars: int = 800) -> list[str]:
    """The text as passages of at most about ``max_chars``, in order."""
    sentences: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        sentence = " ".join(sentence.split())
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            sentences.append(sentence[:cut])
            sentence = sentence[cut:].strip()
        if sentence:
            sentences.append(sentence)
    passages: list[str] = []
    current: list[str] = []
    size = 0
    for sentence in sentences:
        if current and size + len(sentence) + 1 > max_chars:
            passages.append(" ".join(current))
            overlap = current[-1]
            current, size = ([overlap], len(overlap)) if len(overlap) < max_chars // 2 else ([], 0)
        current.append(sentence)
        size += len(sentence) + 1
    if current:
        passage = " ".join(current)
        if not passages or not passages[-1].endswith(passage):
            passages.append(passage)
    return passages


def words(text: str) -> list[str]:
    found = []
    for word in _WORD.findall(text.lower()):
        if word in STOP_WORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        found.append(word)
    return found


def keyword_vector(text: str, *, query: bool = False) -> SparseVector:
    """The sparse vector of ``text``: a passage's weights saturate with repetition; a
    query's words count once each."""
    counts = Counter(_index(word) for word in words(text))
    indices = sorted(counts)
    if query:
        return SparseVector(indices, [1.0] * len(indices))
    return SparseVector(indices, [counts[i] * (K1 + 1) / (counts[i] + K1) for i in indices])


def _index(word: str) -> int:
    # Qdrant's sparse indices are unsigned 32-bit; a collision merges two rare words.
    return zlib.crc32(word.encode())
