"""The vector store in Qdrant's local mode: a search whose scope is checked here (on
candidates found without a filter) gives exactly what Qdrant's own filtered search
gives, for every shape of scope, narrow ones included."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from app.services.knowledge.embeddings import MiniLMEmbedder
from app.services.knowledge.index import SearchIndex
from storage.background import LOWEST_PRIORITY
from storage.vectors import ID_PAGE, Found, Point, Scope, VectorStore

DIMENSION = 16
OWNERS = ["u1", "u2", ""]
TAGS = ["a", "b", "c"]
KNOWLEDGE_SCOPES: list[tuple[Literal["all", "approved", "approved_or_own"] | None, str | None]] = [
    (None, None),
    ("all", None),
    ("approved", None),
    ("approved_or_own", "u1"),
    ("approved_or_own", None),
]


def payload(rng: random.Random, kind: str) -> dict[str, Any]:
    """What entries and documents carry, and now and then what they never do (values
    of the wrong type, missing fields): each matched as Qdrant matches it."""
    if kind != "knowledge":
        return {"title": f"{kind} title", "approved": rng.random() < 0.5}
    fields: dict[str, Any] = {
        "title": "entry title",
        "approved": rng.choice([True, False, True, 1, "true", None]),
        "owner": rng.choice([*OWNERS, None]),
        "tags": rng.sample(TAGS, rng.randrange(len(TAGS) + 1)),
    }
    if rng.random() < 0.1:
        fields["tags"] = rng.choice(TAGS)  # one tag, not a list
    if rng.random() < 0.1:
        del fields[rng.choice(["approved", "owner", "tags"])]
    return {key: value for key, value in fields.items() if value is not None}


def points(rng: random.Random, count: int) -> list[Point]:
    made = []
    chunks: dict[tuple[str, str], int] = {}
    for number in range(count):
        kind = rng.choices(["knowledge", "document", "other"], [6, 3, 1])[0]
        ref = f"d{rng.randrange(30)}" if kind == "document" else f"k{number}"
        # An entry's or a document's passages are numbered from 0, as SearchIndex does.
        chunk = chunks[kind, ref] = chunks.get((kind, ref), -1) + 1
        dense = np.array([rng.gauss(0, 1) for _ in range(DIMENSION)])
        # Words 0-49 are common; 1000 and up each in one passage.
        words = sorted({*rng.sample(range(50), rng.randrange(1, 6)), 1000 + number})
        made.append(
            Point(
                kind=kind,
                ref=ref,
                chunk=chunk,
                dense=(dense / np.linalg.norm(dense)).tolist(),
                sparse_indices=words,
                sparse_values=[rng.uniform(0.5, 2.0) for _ in words],
                payload={**payload(rng, kind), "text": f"passage {number}"},
            )
        )
    return made


def scopes(rng: random.Random) -> list[Scope]:
    kinds = [
        frozenset({"knowledge", "document"}),
        frozenset({"knowledge"}),
        frozenset({"document"}),
    ]
    documents: list[list[str]] = [[], ["d1"], [f"d{n}" for n in range(20)], ["nowhere"]]
    made = [
        Scope(knowledge=knowledge, owner=owner, documents=docs, tags=tags, kinds=kind)
        for knowledge, owner in KNOWLEDGE_SCOPES
        for docs in documents
        for tags in [[], ["a"], ["a", "b"]]
        for kind in kinds
    ]
    return rng.sample(made, 40)


async def search(store: VectorStore, query: Point, scope: Scope, limit: int) -> list[Found]:
    return await store.search(
        query.dense, query.sparse_indices, query.sparse_values, scope, limit=limit
    )


async def test_scope_checked_here_gives_what_qdrant_filters(tmp_path: Path) -> None:
    rng = random.Random(14)
    store = VectorStore(url=None, path=tmp_path / "qdrant", collection="t", dimension=DIMENSION)
    try:
        assert store.scope_checked_here  # local mode
        await store.upsert(points(rng, 400))
        queries = points(random.Random(15), 6)
        # One query shares only common words, one a rare word too, one no word at all.
        queries[1] = replace(queries[1], sparse_indices=[7, 1003], sparse_values=[1.0, 1.0])
        queries[2] = replace(queries[2], sparse_indices=[], sparse_values=[])
        compared = found_some = 0
        for scope in scopes(rng):
            for query in rng.sample(queries, 2):
                # 1: few candidates; 5: a narrow scope needs Qdrant's filter after all;
                # 40: more candidates asked than there are points.
                for limit in (1, 5, 40):
                    store.scope_checked_here = False
                    expected = await search(store, query, scope, limit)
                    store.scope_checked_here = True
                    assert await search(store, query, scope, limit) == expected, (scope, limit)
                    compared += 1
                    found_some += bool(expected)
        assert found_some > compared / 2  # most scopes find something
    finally:
        await store.close()


async def test_a_search_after_deletions_and_changes(tmp_path: Path) -> None:
    rng = random.Random(16)
    store = VectorStore(url=None, path=tmp_path / "qdrant", collection="t", dimension=DIMENSION)
    try:
        made = points(rng, 200)
        await store.upsert(made)
        knowledge = sorted({p.ref for p in made if p.kind == "knowledge"})
        await store.delete("knowledge", knowledge[:40])
        for ref in knowledge[40:80]:
            await store.set_payload("knowledge", ref, {"approved": True, "tags": ["a"]})
        user = Scope(knowledge="approved", tags=["a"], documents=["d3", "d4"])
        for query in points(random.Random(17), 5):
            store.scope_checked_here = False
            expected = await search(store, query, user, 5)
            store.scope_checked_here = True
            got = await search(store, query, user, 5)
            assert got == expected and got
            assert not {f.ref for f in got} & set(knowledge[:40])
            assert all(f.kind == "knowledge" or f.ref in ("d3", "d4") for f in got)
    finally:
        await store.close()


async def test_passages_are_replaced_changed_and_deleted_by_entry(tmp_path: Path) -> None:
    """Local mode finds an entry's passages by their ids, a page at a time: more than
    a page of them, fewer after a change, none after a deletion; others untouched."""
    rng = random.Random(18)
    store = VectorStore(url=None, path=tmp_path / "qdrant", collection="t", dimension=DIMENSION)

    def passages(ref: str, count: int, approved: bool) -> list[Point]:
        return [
            replace(point, kind="knowledge", ref=ref, chunk=chunk, payload={"approved": approved})
            for chunk, point in enumerate(points(rng, count))
        ]

    everyone = Scope(knowledge="approved")
    admin = Scope(knowledge="all")
    query = points(rng, 1)[0]

    async def refs(scope: Scope) -> dict[str, int]:
        found = await search(store, query, scope, 1000)
        return {ref: sum(f.ref == ref for f in found) for ref in {f.ref for f in found}}

    try:
        await store.replace("knowledge", "long", passages("long", ID_PAGE + 6, False))
        await store.replace("knowledge", "other", passages("other", 5, True))
        await store.replace(
            "document", "long", [replace(p, kind="document") for p in passages("long", 3, True)]
        )
        assert await store.count() == ID_PAGE + 6 + 5 + 3
        assert await refs(admin) == {"long": ID_PAGE + 6, "other": 5}

        await store.set_payload("knowledge", "long", {"approved": True})
        assert await refs(everyone) == {"long": ID_PAGE + 6, "other": 5}

        await store.replace("knowledge", "long", passages("long", 2, False))
        assert await store.count() == 2 + 5 + 3
        assert await refs(admin) == {"long": 2, "other": 5}
        assert await refs(everyone) == {"other": 5}

        await store.delete("knowledge", ["long", "nothing"])
        assert await store.count() == 5 + 3
        assert await refs(admin) == {"other": 5}
        documents = await search(store, query, Scope(knowledge=None, documents=["long"]), 10)
        assert len(documents) == 3  # the document of the same ref is another's
    finally:
        await store.close()


def _own_priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice: Linux")
async def test_the_store_and_the_embedder_work_at_the_lowest_priority(tmp_path: Path) -> None:
    # Their CPU work (local mode's scoring, a question's embedding) must not take the
    # event loop's turn: their threads get what it leaves (storage/background.py).
    store = VectorStore(url=None, path=tmp_path / "qdrant", collection="t", dimension=DIMENSION)
    index = SearchIndex(store, MiniLMEmbedder())
    caller = _own_priority()
    try:
        assert await store._run(_own_priority) == LOWEST_PRIORITY
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(index._thread, _own_priority) == LOWEST_PRIORITY
    finally:
        await index.close()
    assert _own_priority() == caller  # the event loop's thread keeps its own


class ThreadRecordingEmbedder(MiniLMEmbedder):
    """The real model, with each load and embed recorded with the thread it ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def load(self) -> None:
        self.calls.append(("load", threading.current_thread().name))
        super().load()

    def embed(self, texts: Sequence[str]) -> Any:
        self.calls.append(("embed", threading.current_thread().name))
        return super().embed(texts)


async def test_a_warmed_up_index_loads_its_model_in_its_thread_before_any_question(
    tmp_path: Path,
) -> None:
    embedder = ThreadRecordingEmbedder()
    store = VectorStore(url=None, path=tmp_path / "qdrant", collection="t", dimension=DIMENSION)
    index = SearchIndex(store, embedder)
    try:
        index.warm_up()
        await index.embed(["the first question"])
    finally:
        await index.close()
    assert [call for call, _ in embedder.calls] == ["load", "embed"]
    assert all(thread.startswith("embed") for _, thread in embedder.calls)


class CountingEmbedder(MiniLMEmbedder):
    """The real model, with the size of each call it gets recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def embed(self, texts: Sequence[str]) -> Any:
        self.calls.append(len(texts))
        return super().embed(texts)


async def test_questions_asked_at_once_are_embedded_in_one_call(tmp_path: Path) -> None:
    # The assistant's start-up burst: each question costs less than half in a batch.
    embedder = CountingEmbedder()
    path = tmp_path / "qdrant"
    store = VectorStore(url=None, path=path, collection="t", dimension=embedder.dimension)
    index = SearchIndex(store, embedder)
    questions = [f"what does the plan say about part {n}?" for n in range(5)]
    topics = ["the budget", "the launch date", "hiring", "the beta", "the office move"]
    try:
        for n, topic in enumerate(topics):
            text = f"Part {n} of the plan is about {topic}. It is owned by team {n}."
            await index.put("knowledge", f"k{n}", f"Part {n}", text, {"approved": True})
        embedder.calls.clear()
        alone = [await index.search(q, Scope(knowledge="all"), limit=5) for q in questions]
        assert embedder.calls == [1] * 5
        assert [found[0].ref for found in alone] == [f"k{n}" for n in range(5)]
        together = await asyncio.gather(
            *(index.search(q, Scope(knowledge="all"), limit=5) for q in [*questions, questions[0]])
        )
        assert embedder.calls == [1] * 5 + [5]  # one call; a question asked twice, once

        def refs(results: Sequence[list[Found]]) -> list[list[str]]:
            return [[found.ref for found in result] for result in results]

        assert refs(together) == refs([*alone, alone[0]])
        vectors = embedder.embed(questions)
        for question, vector in zip(questions, vectors, strict=True):
            assert np.allclose(embedder.embed([question])[0], vector, atol=1e-5)
    finally:
        await index.close()
