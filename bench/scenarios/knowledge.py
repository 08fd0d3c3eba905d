"""Knowledge search at 10,000 passages, Qdrant local mode: how fast passages are
indexed, and how long a search takes.

Runs in this process, through the app's own SearchIndex (app/services/knowledge): the
all-MiniLM-L6-v2 embedder on numpy and Qdrant local mode in a temporary folder, as a
server with no ``QDRANT_URL`` has them. The corpus is made here: 9,000 knowledge
entries and 1,000 documents of one passage each, 250-400 characters of handbook
sentences with names and numbers of their own, so that no two are alike; 80% of the
knowledge is approved, owned by one of 20 users, tagged.

*Indexing*: every passage embedded (batches of 64) and written (a batch per write),
from nothing, as a reindex does: passages per second, with the share of the time spent
embedding and writing, and the folder's size after. *Search*: the 104 reworded
questions of tests/data/knowledge_quality.json, asked ``repeats`` times each, as a
user reads (approved knowledge, and 100 documents they are a member of: the assistant's
retrieval) and as an admin (all knowledge): the whole search (the question embedded,
then the dense and the keyword candidates, filtered, fused), and its two parts alone.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.services.knowledge.embeddings import MiniLMEmbedder, Vectors
from app.services.knowledge.index import Item, SearchIndex
from app.services.knowledge.text import keyword_vector
from bench.harness import ROOT, Histogram
from storage.vectors import Scope, VectorStore

CHUNKS = 10_000
DOCUMENT_SHARE = 0.1
USERS = 20
MEMBER_OF = 100
QUESTIONS = ROOT / "tests" / "data" / "knowledge_quality.json"
NAMES = ["Atlas", "Borealis", "Cobalt", "Delta", "Ember", "Fjord", "Granite", "Harbor"]


class TimedEmbedder:
    """MiniLM, with the seconds it spent."""

    def __init__(self) -> None:
        self.inner = MiniLMEmbedder()
        self.name, self.dimension = self.inner.name, self.inner.dimension
        self.seconds = 0.0

    def load(self) -> None:
        self.inner.load()

    def embed(self, texts: Any) -> Vectors:
        started = time.perf_counter()
        try:
            return self.inner.embed(texts)
        finally:
            self.seconds += time.perf_counter() - started


@dataclass
class KnowledgeResult:
    chunks: int
    index_s: float
    embed_s: float
    folder_mib: float
    search: dict[str, Histogram] = field(default_factory=dict)
    embed_query: Histogram = field(default_factory=Histogram)
    store_query: dict[str, Histogram] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.chunks / self.index_s


def corpus(seed: int = 14) -> list[Item]:
    """``CHUNKS`` items of one passage each: knowledge entries, then documents."""
    data = json.loads(QUESTIONS.read_text())
    sentences = [
        sentence.strip() + "."
        for entry in data["entries"]
        for sentence in entry["text"].split(". ")
        if sentence.strip()
    ]
    titles = [entry["title"] for entry in data["entries"]]
    tags = sorted({tag for entry in data["entries"] for tag in entry["tags"]})
    rng = random.Random(seed)
    documents = int(CHUNKS * DOCUMENT_SHARE)
    items: list[Item] = []
    for number in range(CHUNKS - documents):
        items.append(
            Item(
                "knowledge",
                f"k{number}",
                f"{rng.choice(titles)} ({rng.choice(NAMES)} {number})",
                _passage(rng, sentences, number),
                {
                    "approved": rng.random() < 0.8,
                    "owner": f"user{rng.randrange(USERS)}",
                    "tags": rng.sample(tags, 2),
                },
            )
        )
    for document in range(documents):
        title = f"{rng.choice(NAMES)} project notes {document}"
        items.append(
            Item("document", f"d{document}", title, _passage(rng, sentences, document), {})
        )
    return items


def _mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def _questions() -> list[str]:
    return [q["q"] for q in json.loads(QUESTIONS.read_text())["questions"]]


def _passage(rng: random.Random, sentences: list[str], number: int) -> str:
    text = f"Team {rng.choice(NAMES)} note {number}:"
    while len(text) < 250:
        text += " " + rng.choice(sentences)
    return text[:400].rsplit(" ", 1)[0] + "."


async def run(*, repeats: int) -> KnowledgeResult:
    folder = Path(tempfile.mkdtemp(prefix="bench-qdrant-"))
    embedder = TimedEmbedder()
    embedder.embed(["warm up"])  # the weights load once per process
    embedder.seconds = 0.0
    store = VectorStore(url=None, path=folder, collection="bench", dimension=embedder.dimension)
    index = SearchIndex(store, embedder)
    try:
        items = corpus()
        started = time.perf_counter()
        written = await index.put_many(items)
        index_s = time.perf_counter() - started
        assert await store.count() == written, "every passage is in the index"
        result = KnowledgeResult(
            chunks=written,
            index_s=index_s,
            embed_s=embedder.seconds,
            folder_mib=await asyncio.to_thread(_mib, folder),
        )
        print(f"knowledge: {written:,} passages indexed in {index_s:.0f} s", flush=True)
        questions = _questions()
        documents = sorted({item.ref for item in items if item.kind == "document"})
        scopes = {
            "user": Scope(
                knowledge="approved",
                documents=random.Random(1).sample(documents, MEMBER_OF),
            ),
            "admin": Scope(knowledge="all", kinds=frozenset({"knowledge"})),
        }
        vectors: list[np.ndarray[Any, Any]] = []
        for _ in range(repeats):
            for question in questions:
                started = time.perf_counter()
                vectors.append(embedder.embed([question])[0])
                result.embed_query.record((time.perf_counter() - started) * 1000)
        for name, scope in scopes.items():
            whole, alone = Histogram(), Histogram()
            for _ in range(repeats):
                for question, vector in zip(questions, vectors, strict=False):
                    started = time.perf_counter()
                    await index.search(question, scope, limit=15)
                    whole.record((time.perf_counter() - started) * 1000)
                    keywords = keyword_vector(question, query=True)
                    started = time.perf_counter()
                    await store.search(
                        vector.tolist(), keywords.indices, keywords.values, scope, limit=15
                    )
                    alone.record((time.perf_counter() - started) * 1000)
            result.search[name], result.store_query[name] = whole, alone
            print(f"knowledge: searched as {name}", flush=True)
        return result
    finally:
        await index.close()
        shutil.rmtree(folder, ignore_errors=True)
