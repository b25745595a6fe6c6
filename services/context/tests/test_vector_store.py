"""One conformance suite for every ``VectorStore``: the embedded engine (plain and quantized), LanceDB and Qdrant
through qdrant-client (local mode, the same API and code path as a server)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient
from symbi_context.errors import DimensionMismatch, VectorStoreError
from symbi_context.vectors.edge import EdgeVectorStore
from symbi_context.vectors.keywords import document_keywords, query_keywords
from symbi_context.vectors.lance import LanceVectorStore
from symbi_context.vectors.port import NEVER, MetaFilter, VectorPoint, VectorStore
from symbi_context.vectors.qdrant import QdrantVectorStore

DIM = 32
BACKENDS = ["edge", "edge-int8", "qdrant", "lancedb"]


async def open_store(kind: str, path: Path) -> VectorStore:
    if kind == "qdrant":
        return await QdrantVectorStore.open(AsyncQdrantClient(path=str(path / "qdrant")), DIM)
    if kind == "lancedb":
        return LanceVectorStore(path / "lance", DIM)
    quantization = {"edge": "none", "edge-int8": "int8", "edge-binary": "binary"}[kind]
    return EdgeVectorStore(path / "edge", DIM, quantization=quantization)  # type: ignore[arg-type]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    s = await open_store(request.param, tmp_path)
    yield s
    await s.close()


TEXTS = [
    "the reactor coolant pump failed during the night shift",
    "quarterly revenue grew by ten percent in europe",
    "the cat sleeps on the warm windowsill",
    "deploy the service with three replicas behind the load balancer",
    "the pump was replaced and the reactor restarted",
]


def unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = (v / np.linalg.norm(v)).astype(np.float32)
    return out


def corpus(n: int = 60, seed: int = 7) -> list[VectorPoint]:
    rng = np.random.default_rng(seed)
    points = []
    for i in range(n):
        text = TEXTS[i % len(TEXTS)] + f" entry {i}"
        points.append(
            VectorPoint(
                id=str(uuid.UUID(int=i + 100)),
                vector=unit(rng.normal(size=DIM)),
                keywords=document_keywords(text),
                payload={
                    "owner": f"agent-{i % 3}",
                    "kind": ["short_term", "long_term", "working"][i % 3],
                    "tags": ["even"] if i % 2 == 0 else ["odd"],
                    "created_at": 1000.0 + i,
                    "expires_at": 1030.0 if i < 10 else NEVER,
                    "metadata": {"topic": "ops" if i % 5 in (0, 3, 4) else "other"},
                    "text": text,
                    "n": i,
                },
            )
        )
    return points


async def test_nearest_first_and_exact_agree(store: VectorStore) -> None:
    points = corpus()
    await store.upsert(points)
    assert await store.count() == len(points)
    for target in (points[3], points[41]):
        query = unit(target.vector + np.float32(0.05) * unit(np.ones(DIM, dtype=np.float32)))
        hits = await store.search(query, limit=5)
        exact = await store.search(query, limit=5, exact=True)
        assert hits[0].id == target.id
        # Quantized backends rescore an oversampled candidate list with the originals: the order may differ
        # only among near ties.
        assert len({h.id for h in hits} & {h.id for h in exact}) >= 4
        assert hits[0].score > hits[1].score
        assert hits[0].payload["n"] == target.payload["n"]


async def test_filters(store: VectorStore) -> None:
    points = corpus()
    await store.upsert(points)
    q = points[0].vector

    async def ns(where: MetaFilter, limit: int = 100) -> set[int]:
        return {h.payload["n"] for h in await store.search(q, where=where, limit=limit)}

    assert await ns(MetaFilter(owners=("agent-1",))) == {i for i in range(60) if i % 3 == 1}
    assert await ns(MetaFilter(kinds=("working", "short_term"))) == {i for i in range(60) if i % 3 != 1}
    assert await ns(MetaFilter(tags_any=("odd",))) == {i for i in range(60) if i % 2}
    assert await ns(MetaFilter(equals={"metadata.topic": "other"})) == {i for i in range(60) if i % 5 in (1, 2)}
    assert await ns(MetaFilter(created_from=1010.0, created_to=1012.0)) == {10, 11, 12}
    assert await ns(MetaFilter(alive_at=1031.0)) == set(range(10, 60))
    assert await ns(MetaFilter(alive_at=1029.0)) == set(range(60))
    ids = (points[5].id, points[6].id)
    assert await ns(MetaFilter(ids=ids)) == {5, 6}
    assert await ns(MetaFilter(owners=("agent-0",), kinds=("long_term",))) == set()
    assert await ns(MetaFilter(any_of=(("tags", ("odd", "none")), ("owner", ("agent-1",))))) == {
        i for i in range(60) if i % 2 and i % 3 == 1
    }
    assert await store.count(MetaFilter(owners=("agent-2",))) == 20
    assert {h.payload["n"] for h in await store.scroll(MetaFilter(owners=("agent-0",), tags_any=("even",)))} == {
        i for i in range(60) if i % 6 == 0
    }


async def test_keyword_search_ranks_term_matches(store: VectorStore) -> None:
    await store.upsert(corpus(20))
    hits = await store.search_keywords(query_keywords("reactor pump"), limit=10)
    texts = [h.payload["text"] for h in hits]
    assert texts
    assert all("pump" in t or "reactor" in t for t in texts)
    assert len(hits) == 8  # entries 0, 4, 5, 9, 10, 14, 15, 19
    filtered = await store.search_keywords(query_keywords("reactor"), where=MetaFilter(owners=("agent-1",)), limit=10)
    assert {h.payload["owner"] for h in filtered} == {"agent-1"}
    assert await store.search_keywords(query_keywords("the"), limit=5) == []  # a stop word only


async def test_updates_and_deletes_are_visible_at_once(store: VectorStore) -> None:
    points = corpus(30)
    await store.upsert(points)
    target = points[7]
    moved = VectorPoint(target.id, unit(-target.vector), target.keywords, {**target.payload, "n": 1007})
    await store.upsert([moved])
    assert await store.count() == 30
    hits = await store.search(moved.vector, limit=1)
    assert hits[0].id == target.id
    assert hits[0].payload["n"] == 1007
    await store.delete([target.id, points[8].id])
    assert await store.count() == 28
    assert target.id not in {h.id for h in await store.search(moved.vector, limit=30)}
    await store.delete_where(MetaFilter(owners=("agent-0",)))
    assert await store.count() == 28 - 10  # agent-0 owns 0, 3, ..., 27
    assert await store.count(MetaFilter(owners=("agent-0",))) == 0
    with pytest.raises(VectorStoreError):
        await store.delete_where(MetaFilter())


async def test_dimension_is_checked(store: VectorStore) -> None:
    with pytest.raises(DimensionMismatch):
        await store.search(np.ones(DIM + 1, dtype=np.float32))
    bad = VectorPoint(str(uuid.uuid4()), np.ones(7, dtype=np.float32), document_keywords("x"), {})
    with pytest.raises(DimensionMismatch):
        await store.upsert([bad])


async def test_position_and_reset(store: VectorStore) -> None:
    assert await store.position() == 0
    await store.upsert(corpus(5))
    await store.set_position(42)
    assert await store.position() == 42
    await store.reset()
    assert await store.position() == 0
    assert await store.count() == 0
    await store.upsert(corpus(3))
    assert await store.count() == 3


@pytest.mark.parametrize("kind", ["edge", "qdrant", "lancedb"])
async def test_data_survives_reopen(kind: str, tmp_path: Path) -> None:
    store = await open_store(kind, tmp_path)
    points = corpus(12)
    await store.upsert(points)
    await store.set_position(9)
    await store.close()
    again = await open_store(kind, tmp_path)
    try:
        assert await again.position() == 9
        assert await again.count() == 12
        assert (await again.search(points[4].vector, limit=1))[0].id == points[4].id
    finally:
        await again.close()


async def test_embedded_index_is_built_while_writes_and_searches_go_on(tmp_path: Path) -> None:
    """``optimize`` builds the HNSW graph in a worker thread; upserts and searches keep working meanwhile."""
    import asyncio

    dim = 384
    rng = np.random.default_rng(3)
    data = rng.normal(size=(14_000, dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    store = EdgeVectorStore(tmp_path / "edge", dim, quantization="int8")
    empty = document_keywords("")
    try:
        await store.upsert([VectorPoint(str(uuid.UUID(int=i + 1)), data[i], empty, {"n": i}) for i in range(12_000)])
        building = asyncio.create_task(store.optimize())
        await store.upsert(
            [VectorPoint(str(uuid.UUID(int=i + 1)), data[i], empty, {"n": i}) for i in range(12_000, 14_000)]
        )
        assert (await store.search(data[13_500], limit=1))[0].payload["n"] == 13_500
        await building
        await store.optimize()
        assert store._shard.info().indexed_vectors_count >= 12_000
        assert await store.count() == 14_000
        assert (await store.search(data[42], limit=1))[0].payload["n"] == 42
    finally:
        await store.close()
