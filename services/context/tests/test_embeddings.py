"""The embedders: the local model is a real semantic model; the OpenAI provider speaks the HTTP API."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import FastAPI, Request
from httpx import ASGITransport
from symbi_context.embeddings import LOCAL_DIMENSION, LocalEmbedder, OpenAIEmbedder
from symbi_context.errors import EmbeddingFailed


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    return LocalEmbedder()


async def test_local_model_is_semantic_and_normalised(local: LocalEmbedder) -> None:
    texts = [
        "The cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "Interest rates rose by half a point.",
        "The central bank increased borrowing costs.",
    ]
    v = await local.embed(texts)
    assert v.shape == (4, LOCAL_DIMENSION)
    assert v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > 0.5
    assert sim[2, 3] > 0.35
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[2, 3] > sim[1, 3] + 0.3


async def test_batching_does_not_change_vectors(local: LocalEmbedder) -> None:
    texts = ["short", "a much longer sentence that needs many more tokens than the first one", "mid length text"]
    together = await local.embed(texts)
    alone = np.vstack([await local.embed([t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-4)
    assert (await local.embed([])).shape == (0, LOCAL_DIMENSION)


def openai_compatible_server(local: LocalEmbedder, dimension: int) -> FastAPI:
    """An OpenAI-compatible /embeddings endpoint answering with the local model (zero-padded to ``dimension``)."""
    app = FastAPI()

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, object]:
        assert request.headers["authorization"] == "Bearer sk-test"
        body = await request.json()
        if body["model"] != "text-embedding-3-small":
            return {"error": "unknown model"}
        vectors = await local.embed(body["input"])
        padded = np.zeros((len(vectors), body["dimensions"]), dtype=np.float32)
        padded[:, :LOCAL_DIMENSION] = vectors
        data = [{"index": i, "embedding": row.tolist()} for i, row in enumerate(padded)]
        return {"data": list(reversed(data)), "model": body["model"]}

    return app


async def test_openai_provider(local: LocalEmbedder) -> None:
    transport = ASGITransport(app=openai_compatible_server(local, 1536))
    provider = OpenAIEmbedder(api_key="sk-test", base_url="http://api/v1", transport=transport, batch_size=2)
    try:
        v = await provider.embed(["a dog runs", "a puppy is running", "tax law"])
        assert v.shape == (3, 1536)
        assert provider.dimension == 1536
        assert v[0] @ v[1] > v[0] @ v[2]
        expected = await local.embed(["tax law"])
        assert np.allclose(v[2, :LOCAL_DIMENSION], expected[0], atol=1e-5)  # order restored by "index"
    finally:
        await provider.close()
    wrong = OpenAIEmbedder(api_key="sk-test", base_url="http://api/v1", model="other", transport=transport)
    with pytest.raises(EmbeddingFailed, match="unexpected body"):
        await wrong.embed(["x"])
    await wrong.close()
    with pytest.raises(EmbeddingFailed, match="OPENAI_API_KEY"):
        OpenAIEmbedder(api_key="")


async def test_the_embedding_cache_returns_the_same_vectors_within_its_size() -> None:
    from symbi_context.cache import ENTRY_OVERHEAD, CachedEmbedder
    from symbi_context.embeddings import LocalEmbedder

    inner = LocalEmbedder()
    one = 384 * 4 + ENTRY_OVERHEAD
    cache = CachedEmbedder(inner, max_bytes=2 * one)
    texts = ["the pump failed", "revenue grew", "the cat sleeps"]
    first = await cache.embed(texts[:2])
    again = await cache.embed(texts[:2])
    assert cache.hits == 2
    assert cache.misses == 2
    assert np.array_equal(first, again)
    assert np.allclose(first, await inner.embed(texts[:2]), atol=1e-6)
    await cache.embed([texts[2]])  # a third entry evicts the least recently used one
    assert cache.bytes <= 2 * one
    await cache.embed([texts[0]])
    assert cache.misses == 4
    none = CachedEmbedder(inner, max_bytes=0)
    await none.embed(texts)
    await none.embed(texts)
    assert none.hits == 0
    assert none.bytes == 0
    assert (await cache.embed([])).shape == (0, 384)
