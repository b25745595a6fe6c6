"""The context index meets a memory event signed with a key its registry has not learnt yet (real nats-server; two
context runtimes, one of which has its key registry follower stopped after its start so that it lags behind the
``REGISTRY`` stream, while the other signs with the rotated key as soon as it learnt it).

Rejected, the memory would never be in that process's index. The registry catches up with the stream and the event
is indexed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings
from symbi_context.domain import MEMORY, MemoryStored
from symbi_context.index import ContextIndex
from symbi_context.vectors.edge import EdgeVectorStore
from symbi_context.vectors.port import MetaFilter
from symbi_context.vectors.sealed import SealedVectorStore
from symbi_fixtures.key_rotation import rotate, runtime_env, signing_and_lagging

DIM = 8


@pytest.fixture
async def replicas(
    nats_url: str, keys_dir: Path, provisioned: NatsClient
) -> AsyncIterator[tuple[ServiceRuntime, ServiceRuntime]]:
    """Two context runtimes; the second one's key registry follower is stopped."""
    env = runtime_env(nats_url, keys_dir, SYMBI_POLICY__ENFORCEMENT="allow-all")
    lagging = ServiceRuntime("context", load_settings(env=env), use_database=False)
    signing = ServiceRuntime("context", load_settings(env=env), use_database=False)
    async with signing_and_lagging(signing, lagging, provisioned, keys_dir) as pair:
        yield pair


async def test_a_memory_signed_with_a_key_the_registry_has_not_learnt_yet_is_indexed(
    replicas: tuple[ServiceRuntime, ServiceRuntime], provisioned: NatsClient, keys_dir: Path, tmp_path: Path
) -> None:
    signing, lagging = replicas
    store = SealedVectorStore(EdgeVectorStore(tmp_path / "edge", DIM), lagging.datakeys)
    index = ContextIndex(
        lagging.js,
        store,
        lagging.registry,
        lagging.datakeys,
        fetch_timeout=0.2,
        catch_up_registry=lagging.keys.catch_up,
    )
    task = lagging.spawn(index.run(), "test:index")
    try:
        await asyncio.wait_for(index.ready.wait(), 10)
        new_key = await rotate(signing, provisioned, keys_dir)
        await asyncio.sleep(0.2)
        assert lagging.registry.key(new_key) is None

        stored = MemoryStored(
            memory_id="m1",
            kind="long_term",
            text="the kiln reaches 1200 degrees",
            vector=np.ones(DIM, dtype="<f4").tobytes(),
            model="test",
            created_at=time.time(),
        )
        (rec,) = await signing.store.append("memory", "ada", [stored], MEMORY.codec, expected=NEW_AGGREGATE)
        assert rec.header.signing_key_id == new_key
        assert await index.wait_for(rec.sequence)
        assert index.rejected == 0
        assert await store.count(MetaFilter(owners=("ada",))) == 1
        assert lagging.registry.key(new_key) is not None
    finally:
        await index.stop()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
