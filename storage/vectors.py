"""The vector index on Qdrant: passages with a dense and a sparse vector, searched by
both and fused (reciprocal rank fusion).

Qdrant runs in local mode (a folder; qdrant-client evaluates it in Python, and its
calls block) unless a server URL is given. Every call runs in one worker thread of
this store's own, at the lowest CPU priority (storage/background.py), so the event loop
never waits on Qdrant and local mode's client is only ever used from one thread.
qdrant-client's exceptions stop here: callers see ``VectorStoreError``.

Payload of each point: ``kind`` (``knowledge`` or ``document``), ``ref`` (the entry's
or document's id), ``chunk`` (its number), ``title``, ``text`` (the passage), and for
knowledge ``approved``, ``owner`` and ``tags``, which searches filter on.

Where a search's scope is checked: a Qdrant server filters with its payload indexes.
Local mode has no indexes: it evaluates a filter in Python on every point, for each
of the two candidate searches, which was 80-90% of a search's time (measured at 2,500
passages: 130 ms a filtered search against 5-15 ms unfiltered for the dense vectors).
There, each search asks for ``LOCAL_OVERFETCH`` times the candidates it needs without
a filter, and the scope is checked here on those (storage/vector_scope.py: the same
conditions, matched as Qdrant matches them); only when too few of them are in scope (a
narrow scope: a guest's few documents) does Qdrant filter after all. The candidates, and so
the fused result, are the ones the filtered search gives (tests/test_vector_store.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.hybrid.fusion import reciprocal_rank_fusion

from storage.background import background_executor
from storage.vector_scope import SCOPE_FIELDS, in_scope, refs_filter, scope_filter
from storage.vector_scope import Scope as Scope  # part of this module's interface

log = logging.getLogger(__name__)

T = TypeVar("T")
DENSE = "dense"
SPARSE = "keywords"
# Each of the two searches proposes this many times the passages asked for, for fusion.
CANDIDATES = 4
# Local mode: each search without a filter proposes this many times the candidates it
# needs; those in scope are kept. A user's scope holds most passages, so 3x almost
# always suffices, and a dense search of 3x costs a few ms more than one of 1x.
LOCAL_OVERFETCH = 3
# Local mode finds the passages of an entry or a document by their ids, this many a call.
ID_PAGE = 64
_POINT_IDS = uuid.UUID("8f0f6a52-3c1e-4a8e-9a43-1f5d8f0b7c21")


class VectorStoreError(Exception):
    """Qdrant failed (unreachable, refused, or its files unusable)."""


@dataclass(frozen=True, slots=True)
class Point:
    """A passage: ``chunk`` is its number among the passages of (kind, ref), which are
    numbered from 0 without a gap (local mode finds them by their ids)."""

    kind: str
    ref: str
    chunk: int
    dense: Sequence[float]
    sparse_indices: list[int]
    sparse_values: list[float]
    payload: dict[str, Any]

    @property
    def id(self) -> str:
        return point_id(self.kind, self.ref, self.chunk)


def point_id(kind: str, ref: str, chunk: int) -> str:
    return str(uuid.uuid5(_POINT_IDS, f"{kind}:{ref}:{chunk}"))


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
        self._thread = background_executor("qdrant")  # local mode is CPU work
        # Local mode checks a search's scope here (the module's docstring); a test turns
        # it off to compare with Qdrant's own filtering.
        self.scope_checked_here = url is None

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
            self._delete(client, kind, [ref])
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
            self._delete(self._collection(), kind, refs)

        await self._run(call)

    async def set_payload(self, kind: str, ref: str, payload: dict[str, Any]) -> None:
        def call() -> None:
            client = self._collection()
            points = self._points_of(client, kind, [ref])
            if points:
                client.set_payload(self.collection, payload, points=points, wait=True)

        await self._run(call)

    def _delete(self, client: QdrantClient, kind: str, refs: Sequence[str]) -> None:
        points = self._points_of(client, kind, refs)
        if points:
            client.delete(self.collection, points, wait=True)

    def _points_of(
        self, client: QdrantClient, kind: str, refs: Sequence[str]
    ) -> qm.FilterSelector | qm.PointIdsList | None:
        """The passages of (kind, refs): a filter for a server (its payload indexes);
        in local mode, where a filter is evaluated in Python on every point's payload
        (40 ms a write at 2,500 passages), their ids, found by id: the passages of one
        entry or document are numbered from 0 without a gap (SearchIndex writes them
        so), so their ids are looked up a page at a time until a page is not full."""
        if not self.local:
            return qm.FilterSelector(filter=refs_filter(kind, refs))
        ids: list[qm.ExtendedPointId] = []
        for ref in refs:
            for start in itertools.count(0, ID_PAGE):
                page = [point_id(kind, ref, chunk) for chunk in range(start, start + ID_PAGE)]
                found = client.retrieve(self.collection, page, with_payload=False)
                ids += [point.id for point in found]
                if len(found) < ID_PAGE:
                    break
        return qm.PointIdsList(points=ids) if ids else None

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
        where = scope_filter(scope)
        if where is None:
            return []

        def call() -> list[Found]:
            client = self._collection()
            keywords = (
                qm.SparseVector(indices=sparse_indices, values=sparse_values)
                if sparse_indices
                else None
            )
            if self.scope_checked_here:
                return self._search_checked_here(client, list(dense), keywords, scope, limit)
            prefetch = [
                qm.Prefetch(query=list(dense), using=DENSE, filter=where, limit=limit * CANDIDATES)
            ]
            if keywords is not None:
                prefetch.append(
                    qm.Prefetch(
                        query=keywords, using=SPARSE, filter=where, limit=limit * CANDIDATES
                    )
                )
            answer = client.query_points(
                self.collection,
                prefetch=prefetch,
                query=qm.FusionQuery(fusion=qm.Fusion.RRF),
                limit=limit,
                with_payload=True,
            )
            return [_found(point) for point in answer.points]

        return await self._run(call)

    def _search_checked_here(
        self,
        client: QdrantClient,
        dense: list[float],
        keywords: qm.SparseVector | None,
        scope: Scope,
        limit: int,
    ) -> list[Found]:
        """What the filtered, fused query gives, with the scope checked here (in the
        worker thread)."""
        check = in_scope(scope)
        wanted = limit * CANDIDATES
        # Documents alone (a guest's) are a small part of the index: no knowledge in
        # scope, and Qdrant filters at once, as before.
        documents_only = scope.knowledge is None or "knowledge" not in scope.kinds
        nearest, narrow = self._candidates(
            client, dense, DENSE, scope, check, wanted, documents_only
        )
        sources = [nearest]
        if keywords is not None:
            # A scope too narrow for the dense candidates is for the keyword ones too:
            # Qdrant filters them at once (their search without a filter costs as much).
            sources.append(
                self._candidates(client, keywords, SPARSE, scope, check, wanted, narrow)[0]
            )
        # The fusion Qdrant's local mode applies to prefetches, then their payloads.
        fused = reciprocal_rank_fusion(sources, limit=limit)
        if not fused:
            return []
        payloads = {
            point.id: point.payload
            for point in client.retrieve(
                self.collection, [point.id for point in fused], with_payload=True
            )
        }
        found = []
        for point in fused:
            if point.id in payloads:  # always, but for a deletion in between
                point.payload = payloads[point.id]
                found.append(_found(point))
        return found

    def _candidates(
        self,
        client: QdrantClient,
        query: list[float] | qm.SparseVector,
        using: str,
        scope: Scope,
        check: Callable[[dict[str, Any]], bool],
        wanted: int,
        narrow: bool = False,
    ) -> tuple[list[qm.ScoredPoint], bool]:
        """The ``wanted`` best points in scope by one vector, best first; and whether
        Qdrant had to filter them (too few in scope among the nearest: a narrow scope)."""
        if not narrow:
            asked = wanted * LOCAL_OVERFETCH
            nearest = client.query_points(
                self.collection, query=query, using=using, limit=asked, with_payload=SCOPE_FIELDS
            ).points
            kept = [point for point in nearest if check(point.payload or {})]
            # Fewer than asked: there is no other candidate (none shares a keyword).
            if len(kept) >= wanted or len(nearest) < asked:
                return kept[:wanted], False
        where = scope_filter(scope)
        filtered = client.query_points(
            self.collection, query=query, using=using, query_filter=where, limit=wanted
        ).points
        return filtered, True

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
