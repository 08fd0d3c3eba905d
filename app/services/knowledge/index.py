"""Passages of knowledge entries and room documents: chunked, embedded (dense and
keyword vectors) and kept in the vector store; searched by both, fused."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.services.cache import BatchedLoads
from app.services.knowledge.embeddings import Embedder, Vectors
from app.services.knowledge.text import chunks, keyword_vector
from storage.background import background_executor
from storage.vectors import Found, Point, Scope, VectorStore

log = logging.getLogger(__name__)

# Passages are embedded in batches of this many (memory stays bounded for long texts).
EMBED_BATCH = 64
# Questions waiting for their vectors, embedded together at most this many at a time.
QUESTION_BATCH = 64
# A passage's length at most (about 200 of the model's tokens; it reads 256).
PASSAGE_CHARS = 800


@dataclass(frozen=True, slots=True)
class Item:
    """An entry or a document to index."""

    kind: str
    ref: str
    title: str
    text: str
    payload: dict[str, Any]


class SearchIndex:
    def __init__(
        self, store: VectorStore, embedder: Embedder, *, chunk_chars: int = PASSAGE_CHARS
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.chunk_chars = chunk_chars
        # Embedding is CPU work: one thread of its own, so that it never takes both
        # cores from the event loop, apart from the store's thread, and at the lowest
        # priority, so that it never takes the event loop's turn either.
        self._thread = background_executor("embed")
        # Questions asked while one is being embedded are embedded together next: in
        # one call, each costs less than half of what it costs alone (50 asks at once,
        # the assistant's start-up burst).
        self._questions: BatchedLoads[str, Vectors] = BatchedLoads(
            self._embed_questions, max_keys=QUESTION_BATCH
        )

    def warm_up(self) -> None:
        """Load the embedding model now, in its thread, rather than for the first
        question: the load (imports, the weights read and laid out) takes ~150 ms of
        CPU beside the event loop. Loaded by the first of 50 assistant asks at once, it
        took other rooms' chat acks to 7.6 ms at p99, against 3.9 ms loaded at start-up
        (4 runs of each). A model that cannot load is reported by the first ``embed``."""
        self._thread.submit(self._load)

    def _load(self) -> None:
        try:
            self.embedder.load()
        except Exception as exc:  # the first embed raises it to whoever asked
            log.warning("could not load the embedding model %s: %s", self.embedder.name, exc)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self.embedder.embed, list(texts))

    async def _embed_questions(self, questions: list[str]) -> dict[str, Vectors]:
        return dict(zip(questions, await self.embed(questions), strict=True))

    async def points(
        self, kind: str, ref: str, title: str, text: str, payload: dict[str, Any]
    ) -> list[Point]:
        """The passages of one entry or document, embedded."""
        passages = chunks(text, max_chars=self.chunk_chars)
        points: list[Point] = []
        for start in range(0, len(passages), EMBED_BATCH):
            batch = passages[start : start + EMBED_BATCH]
            # The title goes with each passage into both vectors: it says what the
            # passage is about when the passage itself does not.
            vectors = await self.embed([f"{title}. {passage}" for passage in batch])
            for offset, (passage, vector) in enumerate(zip(batch, vectors, strict=True)):
                keywords = keyword_vector(f"{title}. {passage}")
                points.append(
                    Point(
                        kind=kind,
                        ref=ref,
                        chunk=start + offset,
                        dense=vector.tolist(),
                        sparse_indices=keywords.indices,
                        sparse_values=keywords.values,
                        payload={"title": title, "text": passage, **payload},
                    )
                )
        return points

    async def put(self, kind: str, ref: str, title: str, text: str, payload: dict[str, Any]) -> int:
        """Replace the passages of (kind, ref); returns how many it has now."""
        points = await self.points(kind, ref, title, text, payload)
        await self.store.replace(kind, ref, points)
        return len(points)

    async def put_many(self, items: Sequence[Item]) -> int:
        """Add the passages of many items, embedded and written in batches (a rebuild:
        the passages they had before are not looked for). Returns how many."""
        passages = [
            (item, number, passage)
            for item in items
            for number, passage in enumerate(chunks(item.text, max_chars=self.chunk_chars))
        ]
        for start in range(0, len(passages), EMBED_BATCH):
            batch = passages[start : start + EMBED_BATCH]
            labelled = [f"{item.title}. {passage}" for item, _, passage in batch]
            vectors = await self.embed(labelled)
            points = []
            for (item, number, passage), text, vector in zip(batch, labelled, vectors, strict=True):
                keywords = keyword_vector(text)
                points.append(
                    Point(
                        kind=item.kind,
                        ref=item.ref,
                        chunk=number,
                        dense=vector.tolist(),
                        sparse_indices=keywords.indices,
                        sparse_values=keywords.values,
                        payload={"title": item.title, "text": passage, **item.payload},
                    )
                )
            await self.store.upsert(points)
        return len(passages)

    async def remove(self, kind: str, refs: Sequence[str]) -> None:
        if refs:
            await self.store.delete(kind, refs)

    async def search(self, query: str, scope: Scope, *, limit: int) -> list[Found]:
        dense = await self._questions.load(query)
        assert dense is not None  # every question asked gets its vector
        keywords = keyword_vector(query, query=True)
        return await self.store.search(
            dense.tolist(), keywords.indices, keywords.values, scope, limit=limit
        )

    async def close(self) -> None:
        try:
            await self.store.close()
        finally:
            self._thread.shutdown(wait=True)
