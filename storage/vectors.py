"""The vector index on Qdrant: passages with a dense and a sparse vector, searched by
both and fused (reciprocal rank fusion).

Qdrant runs in local mode (a folder; qdrant-client evaluates it in Python, and its
calls block) unless a server URL is given. Every call runs in one worker thread of
this store's own, so the event loop never waits on Qdrant and local mode's client is
only ever used from one thread. qdrant-client's exceptions stop here: callers see
``VectorStoreError``.

Payload of each point: ``kind`` (``knowledge`` or ``document``), ``ref`` (the entry's
or document's id), ``chunk`` (its number), ``title``, ``text`` (the passage), and for
knowledge ``approved``, ``owner`` and ``tags``, which searches filter on.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from qdrant_client import QdrantClient
from qdrant_client import models as qm

log = logging.getLogger(__name__)

T = TypeVar("T")
DENSE = "dense"
SPARSE = "keywords"
# Each of the two searches proposes this many times the passages asked for, for fusion.
CANDIDATES = 4
_POINT_IDS = uuid.UUID("8f0f6a52-3c1e-4a8e-9a43-1f5d8f0b7c21")


class VectorStoreError(Exception):
    """Qdrant failed (unreachable, refused, or its files unusable)."""


@dataclass(frozen=True, slots=True)
class Point:
    kind: str
    ref: str
    chunk: int
    dense: Sequence[float]
    sparse_indices: list[int]
    sparse_values: list[float]
    payload: dict[str, Any]

    @property
    def id(self) -> str:
        return str(uuid.uuid5(_POINT_IDS, f"{self.kind}:{self.ref}:{self.chunk}"))


@dataclass(frozen=True, slots=True)
class Scope:
    """What a search may return: knowledge entries (``all``, ``approved`` ones, or
    approved ones and ``owner``'s) and the passages of ``documents``."""

    knowledge: Literal["all", "approved", "approved_or_own"] | None
    owner: str | None = None
    documents: Sequence[str] = ()
    tags: Sequence[str] = ()
    kinds: frozenset[str] = field(default_factory=lambda: frozenset({"knowledge", "document"}))


@dataclass(frozen=True, slots=True)
class Found:
    kind: str
    ref: str
    chunk: int
    title: str
    text: str
    score: float


class VectorStore:
    def __init__(
        self, *, url: str | None, path: Path | None, collection: str, dimension: int
    ) -> None:
        if url is None and path is None:
            raise ValueError("a Qdrant URL or a folder for local mode")
        self._url = url
        self._path = path
        self.collection = collection
        self.dimension = dimension
        self._client: QdrantClient | None = None
        self._ready = False
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant")

    @property
    def local(self) -> bool:
        return self._url is None

    async def _run(self, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, call)
        except VectorStoreError:
            raise
        except Exception as exc:  # qdrant-client raises many kinds; none passes here
            raise VectorStoreError(f"{type(exc).__name__}: {exc}") from exc

    def _collection(self) -> QdrantClient:
        """The client, with the collection created (in the worker thread)."""
        if self._client is None:
            if self._url is not None:
                self._client = QdrantClient(url=self._url, timeout=10)
            else:
                assert self._path is not None
                self._path.mkdir(parents=True, exist_ok=True)
                self._client = QdrantClient(path=str(self._path))
        client = self._client
        if not self._ready:
            if not client.collection_exists(self.collection):
                client.create_collection(
                    self.collection,
                    vectors_config={
                        DENSE: qm.VectorParams(size=self.dimension, distance=qm.Distance.COSINE)
                    },
                    sparse_vectors_config={SPARSE: qm.SparseVectorParams(modifier=qm.Modifier.IDF)},
                )
                if self._url is not None:  # a server indexes payload fields; local mode cannot
                    for name in ("kind", "ref", "owner", "tags"):
                        client.create_payload_index(
                            self.collection, name, qm.PayloadSchemaType.KEYWORD
                        )
            self._ready = True
        return client

    async def replace(self, kind: str, ref: str, points: Sequence[Point]) -> None:
        """Make ``points`` the passages of (kind, ref): those before are deleted."""

        def call() -> None:
            client = self._collection()
            client.delete(self.collection, qm.FilterSelector(filter=_of(kind, [ref])), wait=True)
            if points:
                client.upsert(self.collection, [_point(point) for point in points], wait=True)

        await self._run(call)

    async def upsert(self, points: Sequence[Point]) -> None:
        def call() -> None:
            self._collection().upsert(
                self.collection, [_point(point) for point in points], wait=True
            )

        await self._run(call)

    async def delete(self, kind: str, refs: Sequence[str]) -> None:
        def call() -> None:
            client = self._collection()
            client.delete(self.collection, qm.FilterSelector(filter=_of(kind, refs)), wait=True)

        await self._run(call)

    async def set_payload(self, kind: str, ref: str, payload: dict[str, Any]) -> None:
        def call() -> None:
            client = self._collection()
            client.set_payload(self.collection, payload, points=_of(kind, [ref]), wait=True)

        await self._run(call)

    async def search(
        self,
        dense: Sequence[float],
        sparse_indices: list[int],
        sparse_values: list[float],
        scope: Scope,
        *,
        limit: int,
    ) -> list[Found]:
        """The best passages in ``scope``: dense and keyword candidates, fused by rank."""
        where = _scope_filter(scope)
        if where is None:
            return []

        def call() -> list[Found]:
            prefetch = [
                qm.Prefetch(query=list(dense), using=DENSE, filter=where, limit=limit * CANDIDATES)
            ]
            if sparse_indices:
                keywords = qm.SparseVector(indices=sparse_indices, values=sparse_values)
                prefetch.append(
                    qm.Prefetch(
                        query=keywords, using=SPARSE, filter=where, limit=limit * CANDIDATES
                    )
                )
            answer = self._collection().query_points(
                self.collection,
                prefetch=prefetch,
                query=qm.FusionQuery(fusion=qm.Fusion.RRF),
                limit=limit,
                with_payload=True,
            )
            return [_found(point) for point in answer.points]

        return await self._run(call)

    async def count(self) -> int:
        def call() -> int:
            return self._collection().count(self.collection, exact=True).count

        return await self._run(call)

    async def drop(self) -> None:
        """Delete the collection (the next write creates it empty)."""

        def call() -> None:
            client = self._collection()
            client.delete_collection(self.collection)
            self._ready = False

        await self._run(call)

    async def close(self) -> None:
        def call() -> None:
            if self._client is not None:
                self._client.close()
                self._client = None
                self._ready = False

        try:
            await self._run(call)
        finally:
            self._thread.shutdown(wait=True)


def _of(kind: str, refs: Sequence[str]) -> qm.Filter:
    return qm.Filter(
        must=[
            qm.FieldCondition(key="kind", match=qm.MatchValue(value=kind)),
            qm.FieldCondition(key="ref", match=qm.MatchAny(any=list(refs))),
        ]
    )


def _scope_filter(scope: Scope) -> qm.Filter | None:
    either: list[qm.Filter] = []
    if scope.knowledge is not None and "knowledge" in scope.kinds:
        must: list[qm.Condition] = [
            qm.FieldCondition(key="kind", match=qm.MatchValue(value="knowledge"))
        ]
        must += [
            qm.FieldCondition(key="tags", match=qm.MatchValue(value=tag)) for tag in scope.tags
        ]
        approved = qm.FieldCondition(key="approved", match=qm.MatchValue(value=True))
        if scope.knowledge == "approved":
            must.append(approved)
        elif scope.knowledge == "approved_or_own":
            own = qm.FieldCondition(key="owner", match=qm.MatchValue(value=scope.owner or ""))
            must.append(qm.Filter(should=[approved, own]))
        either.append(qm.Filter(must=must))
    if scope.documents and "document" in scope.kinds:
        either.append(_of("document", scope.documents))
    if not either:
        return None
    return either[0] if len(either) == 1 else qm.Filter(should=list(either))


def _point(point: Point) -> qm.PointStruct:
    return qm.PointStruct(
        id=point.id,
        vector={
            DENSE: list(point.dense),
            SPARSE: qm.SparseVector(indices=point.sparse_indices, values=point.sparse_values),
        },
        payload={"kind": point.kind, "ref": point.ref, "chunk": point.chunk, **point.payload},
    )


def _found(point: qm.ScoredPoint) -> Found:
    payload = point.payload or {}
    return Found(
        kind=str(payload.get("kind", "")),
        ref=str(payload.get("ref", "")),
        chunk=int(payload.get("chunk", 0)),
        title=str(payload.get("title", "")),
        text=str(payload.get("text", "")),
        score=float(point.score),
    )
