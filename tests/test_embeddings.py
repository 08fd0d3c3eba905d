"""The embedders: the local all-MiniLM-L6-v2 forward pass against the scores
sentence-transformers publishes for it, and a hosted API through the common
``/v1/embeddings`` shape (a local stand-in speaks it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from app.services.knowledge.embeddings import ApiEmbedder, EmbeddingError, MiniLMEmbedder


def test_minilm_gives_the_published_scores() -> None:
    # sentence-transformers' semantic search example, with all-MiniLM-L6-v2.
    embedder = MiniLMEmbedder()
    corpus = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "A man is riding a horse.",
        "A man is riding a white horse on an enclosed ground.",
    ]
    [query] = embedder.embed(["A man is eating pasta."])
    scores = embedder.embed(corpus) @ query
    assert np.allclose(scores, [0.7035, 0.5272, 0.1889, 0.1047], atol=2e-3), scores
    assert embedder.embed([]).shape == (0, 384)


@pytest.fixture
async def embeddings_api() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def embed(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"body": body, "authorization": request.headers.get("Authorization")})
        if body["input"] == ["fail"]:
            return web.json_response({"error": "overloaded"}, status=529)
        # Answered out of order, as the shape allows: `index` says which is which.
        data = [
            {"index": i, "embedding": [float(len(text)), 1.0, 0.0]}
            for i, text in enumerate(body["input"])
        ]
        return web.json_response({"data": list(reversed(data))})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embed)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/v1/embeddings")), seen
    await server.close()


async def test_a_hosted_api_is_asked_in_its_shape(
    embeddings_api: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = embeddings_api
    embedder = ApiEmbedder(url=url, model="m-1", dimension=3, api_key="k")
    vectors = await asyncio.to_thread(embedder.embed, ["ab", "abcd"])
    expected = np.array([[2.0, 1.0, 0.0], [4.0, 1.0, 0.0]])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)  # normalised, in order
    assert np.allclose(vectors, expected)
    assert seen[-1] == {
        "body": {"model": "m-1", "input": ["ab", "abcd"]},
        "authorization": "Bearer k",
    }
    with pytest.raises(EmbeddingError):
        await asyncio.to_thread(embedder.embed, ["fail"])
    wrong = ApiEmbedder(url=url, model="m-1", dimension=4, api_key=None)
    with pytest.raises(EmbeddingError, match="shape"):
        await asyncio.to_thread(wrong.embed, ["ab"])
