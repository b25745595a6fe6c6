"""The vector index is a projection of the stream: replaying the events into an empty index — embedded or
Qdrant — gives the same search results as the live index, and a deleted index rebuilds itself on restart."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from qdrant_client import AsyncQdrantClient
from symbi_common.settings import Settings
from symbi_context.embeddings import LocalEmbedder
from symbi_context.index import ContextIndex
from symbi_context.retrieval import hybrid_search
from symbi_context.vectors.edge import EdgeVectorStore
from symbi_context.vectors.lance import LanceVectorStore
from symbi_context.vectors.port import MetaFilter, VectorStore
from symbi_context.vectors.qdrant import QdrantVectorStore
from symbi_context.vectors.sealed import SealedVectorStore


async def populate(r: Any, corpus: dict[str, str]) -> int:
    last = 0
    for name, text in corpus.items():
        out = await r.post(
            "/v1/knowledge/science/documents",
            {"agent_id": "librarian", "title": name, "text": text, "media_type": "text/markdown"},
            201,
        )
        last = out["sequence"]
    out = await r.post(
        "/v1/memories",
        {
            "agent_id": "ada",
            "memories": [
                {"text": "I water the tomato plants every morning."},
                {"text": "The lab's kiln reaches 1200 degrees."},
                {"text": "Temporary note about the oven.", "kind": "working", "origin": {"task_id": "t1"}},
            ],
        },
        201,
    )
    gone = await r.post("/v1/memories/forget", {"agent_id": "ada", "ids": [out["ids"][1]]})
    docs = await r.post("/v1/knowledge/search", {"agent_id": "x", "query": "bread", "knowledge_bases": ["science"]})
    forgot = await r.post(
        "/v1/knowledge/science/forget", {"agent_id": "librarian", "document_ids": [docs["results"][0]["document_id"]]}
    )
    last = max(last, gone["sequence"], forgot["sequence"])
    assert await r.index.wait_for(last)
    return last


async def results(store: VectorStore, queries: list[str]) -> list[list[tuple[str, float]]]:
    embedder = LocalEmbedder()
    where = [MetaFilter(owners=("science", "ada"))]
    out = []
    for q in queries:
        vector = (await embedder.embed([q]))[0]
        hits = await hybrid_search(store, q, vector, where, limit=8)
        out.append([(h.id, round(h.relevance, 4)) for h in hits])
    return out


async def replay(running: Any, store: VectorStore, last: int) -> None:
    rt = running.app.state.runtime
    index = ContextIndex(rt.js, store, rt.registry, rt.datakeys)
    rt.spawn(index.run(), "test:replay")
    try:
        assert await index.wait_for(last, timeout=20)
    finally:
        await index.stop()
    # The position is stored lazily (not after every batch), but always when the consumer stops.
    for _ in range(100):
        if await store.position() >= last:
            break
        await asyncio.sleep(0.05)
    assert await store.position() >= last


async def test_replay_into_every_backend_equals_the_live_index(
    running: Any, corpus: dict[str, str], questions: list[tuple[str, str]], tmp_path: Path
) -> None:
    last = await populate(running, corpus)
    queries = [q for q, _ in questions] + ["tomato plants", "kiln temperature", "oven"]
    live_store = running.index.store
    live = await results(live_store, queries)
    assert sum(len(r) for r in live) > 0
    assert "bread" not in str(await live_store.scroll(MetaFilter(equals={"title": "sourdough"})))

    keys = running.app.state.runtime.datakeys
    edge = SealedVectorStore(EdgeVectorStore(tmp_path / "rebuilt", live_store.dimension), keys)
    qdrant = SealedVectorStore(
        await QdrantVectorStore.open(AsyncQdrantClient(location=":memory:"), live_store.dimension), keys
    )
    lance = SealedVectorStore(LanceVectorStore(tmp_path / "lance", live_store.dimension), keys)
    try:
        for store in (edge, qdrant, lance):
            await replay(running, store, last)
            assert await store.count() == await live_store.count()
            assert await results(store, queries) == live
    finally:
        await edge.close()
        await qdrant.close()
        await lance.close()
    # After crypto-shredding Ada's data key a rebuild has nothing of hers, and everything else.
    await running.app.state.runtime.datakeys.destroy("memory.ada")
    shredded = SealedVectorStore(EdgeVectorStore(tmp_path / "after-shredding", live_store.dimension), keys)
    try:
        await replay(running, shredded, last)
        assert await shredded.count(MetaFilter(owners=("ada",))) == 0
        assert await shredded.count() == await live_store.count(MetaFilter(owners=("science",))) > 0
    finally:
        await shredded.close()


async def test_deleted_index_rebuilds_on_restart(start: Any, settings: Settings, corpus: dict[str, str]) -> None:
    small = {k: corpus[k] for k in ("tcp", "sleep", "volcanoes")}
    queries = ["what is a handshake", "why do we need rest", "lava"]
    last = 0
    async for first in start(settings):
        for name, text in small.items():
            out = await first.post(
                "/v1/knowledge/science/documents", {"agent_id": "a", "title": name, "text": text}, 201
            )
            last = out["sequence"]
        assert await first.index.wait_for(last)
        before = await results(first.index.store, queries)
        count = await first.index.store.count()
    # The service stopped; delete its index directory and start again: it replays the stream.
    shutil.rmtree(Path(settings.context.vector_data_path))
    async for again in start(settings):
        assert await again.index.wait_for(last, timeout=20)
        assert await again.index.store.count() == count > 0
        assert await results(again.index.store, queries) == before
