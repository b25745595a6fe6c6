"""``SealedVectorStore``: the engine under it receives ids and sealed content only, and refuses unsealable points."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient
from symbi_common.datakeys import DataKeys, MemoryDataKeyStore
from symbi_context.errors import VectorStoreError
from symbi_context.vectors.edge import EdgeVectorStore
from symbi_context.vectors.keywords import document_keywords
from symbi_context.vectors.lance import LanceVectorStore
from symbi_context.vectors.port import NEVER, MetaFilter, VectorPoint, VectorStore
from symbi_context.vectors.qdrant import QdrantVectorStore
from symbi_context.vectors.sealed import SealedVectorStore

DIM = 8


def point(owner: str, text: str, key_id: str | None, n: int) -> VectorPoint:
    payload = {
        "owner": owner,
        "scope": "memory",
        "kind": "long_term",
        "text": text,
        "tags": ["red"] if n % 2 else ["blue"],
        "metadata": {"topic": f"t{n % 3}", "nested": {"deep": n}},
        "origin": {"task_id": f"task-{n}"},
        "created_at": 1.0,
        "expires_at": NEVER,
    }
    if key_id is not None:
        payload["data_key_id"] = key_id
    vector = np.ones(DIM, dtype=np.float32) + np.float32(n)
    return VectorPoint(str(uuid.UUID(int=n + 1)), vector / np.linalg.norm(vector), document_keywords(text), payload)


async def open_inner(backend: str, path: Path) -> VectorStore:
    if backend == "qdrant":
        return await QdrantVectorStore.open(AsyncQdrantClient(path=str(path / "qdrant")), DIM)
    if backend == "lancedb":
        return LanceVectorStore(path / "lance", DIM)
    return EdgeVectorStore(path / "edge", DIM)


def on_disk(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize("backend", ["edge", "qdrant", "lancedb"])
async def test_only_sealed_content_reaches_the_engine(backend: str, tmp_path: Path) -> None:
    keys = DataKeys(MemoryDataKeyStore(), os.urandom(32))
    ada = (await keys.current("memory.ada")).key_id
    bob = (await keys.current("memory.bob")).key_id
    inner = await open_inner(backend, tmp_path)
    store = SealedVectorStore(inner, keys)
    try:
        await store.upsert([point("ada", f"ada secret {n}", ada, n) for n in range(6)])
        await store.upsert([point("bob", f"bob note {n}", bob, n + 10) for n in range(3)])
        raw = await inner.scroll()
        assert len(raw) == 9
        for hit in raw:
            assert not {"text", "title", "source", "metadata", "origin"} & set(hit.payload)
            assert "secret" not in str(hit.payload)
            assert "note" not in str(hit.payload)
            assert "red" not in hit.payload["tags"]
            assert "blue" not in hit.payload["tags"]
        await store.optimize()
        await store.set_position(1)  # the engines flush their files
        assert on_disk(tmp_path, b"secret") == []
        assert on_disk(tmp_path, b"task-0") == []
        opened = await store.scroll(MetaFilter(owners=("ada",)))
        assert sorted(h.payload["text"] for h in opened) == [f"ada secret {n}" for n in range(6)]
        assert opened[0].payload["origin"] == {"task_id": "task-0"}
        # Filters on tags and metadata (nested too) work through the blind terms, per owner.
        red = await store.scroll(MetaFilter(owners=("ada", "bob"), tags_any=("red",)))
        assert sorted(h.payload["text"] for h in red) == ["ada secret 1", "ada secret 3", "ada secret 5", "bob note 1"]
        topic = await store.count(
            MetaFilter(owners=("ada",), equals={"metadata.topic": "t1", "metadata.nested.deep": 4})
        )
        assert topic == 1
        with pytest.raises(VectorStoreError):
            await store.scroll(MetaFilter(tags_any=("red",)))  # terms need an owner's key
        # A point without its data key id is refused, not stored in the clear.
        with pytest.raises(VectorStoreError):
            await store.upsert([point("ada", "unsealable", None, 99)])
        # Crypto-shredding: Ada's points are no longer served, even before the index purges them.
        await keys.destroy("memory.ada")
        assert sorted(h.payload["owner"] for h in await store.scroll()) == ["bob"] * 3
        assert (
            await store.search(np.ones(DIM, dtype=np.float32), where=MetaFilter(owners=("ada",), tags_any=("red",)))
            == []
        )
    finally:
        await store.close()
