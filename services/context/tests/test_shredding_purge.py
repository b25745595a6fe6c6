"""Crypto-shredding purges an owner from the index for good: a batch applied after the purge cannot index the
owner again with the key this process still had cached when another process destroyed it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from symbi_common.datakeys import DataKeys, MemoryDataKeyStore
from symbi_common.keyfiles import load_service_keys
from symbi_common.keyring import KeyRegistry
from symbi_context.index import ContextIndex
from symbi_context.vectors.edge import EdgeVectorStore
from symbi_context.vectors.port import MetaFilter
from symbi_context.vectors.sealed import SealedVectorStore

from .test_sealed import DIM, point


async def test_an_erased_owner_is_not_indexed_again_with_a_cached_key(
    tmp_path: Path, keys_dir: Path, registry: KeyRegistry
) -> None:
    own = load_service_keys(keys_dir / "context", "context")
    records = MemoryDataKeyStore()
    # This process's keys: not following changes, like a process whose notice of the destruction is still to come.
    keys = DataKeys(records, own.wrap, registry, service="context")
    key_id = (await keys.current("memory.ada")).key_id
    store = SealedVectorStore(EdgeVectorStore(tmp_path / "edge", DIM), keys)
    index = ContextIndex(None, store, registry, keys)  # its follower is not run: only the shredding watch
    shredding = asyncio.create_task(index.follow_shredding(records))
    try:
        await asyncio.sleep(0.01)  # the watch is listening
        await store.upsert([point("ada", "ada secret", key_id, 1)])
        await records.destroy("memory.ada")  # another process erases Ada (the audit service)
        for _ in range(200):
            if index.shredded:
                break
            await asyncio.sleep(0.01)
        assert index.shredded == 1
        assert await store.inner.count(MetaFilter(owners=("ada",))) == 0
        # The next batch holds Ada's event: the key is no longer cached, so nothing of her is indexed.
        await store.upsert([point("ada", "ada secret", key_id, 1)])
        assert await store.inner.count(MetaFilter(owners=("ada",))) == 0
    finally:
        shredding.cancel()
        await store.close()
