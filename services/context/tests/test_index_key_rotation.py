"""The context index meets a memory event signed with a key its registry has not learnt yet (real nats-server; two
context runtimes, one of which has its key registry follower stopped after its start so that it lags behind the
``REGISTRY`` stream, while the other signs with the rotated key as soon as it learnt it).

Rejected, the memory would never be in that process's index. The registry catches up with the stream and the event
is indexed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.key_material import read_key_file
from symbi_common.keyfiles import rotate_service_key
from symbi_common.registry_stream import publish, read_signed_files
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings
from symbi_context.domain import MEMORY, MemoryStored
from symbi_context.index import ContextIndex
from symbi_context.vectors.edge import EdgeVectorStore
from symbi_context.vectors.port import MetaFilter
from symbi_context.vectors.sealed import SealedVectorStore

DIM = 8


async def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


async def _publish(nc: NatsClient, keys_dir: Path) -> int | None:
    return await publish(nc, read_signed_files(keys_dir), read_key_file(keys_dir / "root.pub"))


@pytest.fixture
async def replicas(
    nats_url: str, keys_dir: Path, provisioned: NatsClient
) -> AsyncIterator[tuple[ServiceRuntime, ServiceRuntime]]:
    """Two context runtimes; the second one's key registry follower is stopped."""
    env = {
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": "warning",
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
    }
    await _publish(provisioned, keys_dir)  # the key files' version is on the stream (`symbi up` does this)
    lagging = ServiceRuntime("context", load_settings(env=env), use_database=False)
    signing = ServiceRuntime("context", load_settings(env=env), use_database=False)
    started: list[ServiceRuntime] = []
    try:
        await lagging.start()
        started.append(lagging)
        (follow,) = [t for t in asyncio.all_tasks() if t.get_name() == "keys:follow"]
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        await signing.start()
        started.append(signing)
        yield signing, lagging
    finally:
        for rt in reversed(started):
            await rt.stop()


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
        version = lagging.registry.version
        new_key = rotate_service_key(keys_dir, "context")
        assert await _publish(provisioned, keys_dir) == version + 1
        await eventually(lambda: signing.store.signer.key_id == new_key.key_id, "the signing replica uses the new key")
        await asyncio.sleep(0.2)
        assert lagging.registry.key(new_key.key_id) is None

        stored = MemoryStored(
            memory_id="m1",
            kind="long_term",
            text="the kiln reaches 1200 degrees",
            vector=np.ones(DIM, dtype="<f4").tobytes(),
            model="test",
            created_at=time.time(),
        )
        (rec,) = await signing.store.append("memory", "ada", [stored], MEMORY.codec, expected=NEW_AGGREGATE)
        assert rec.header.signing_key_id == new_key.key_id
        assert await index.wait_for(rec.sequence)
        assert index.rejected == 0
        assert await store.count(MetaFilter(owners=("ada",))) == 1
        assert lagging.registry.key(new_key.key_id) is not None
    finally:
        await index.stop()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
