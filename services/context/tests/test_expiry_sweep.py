"""The expiry sweep: every vector backend filters on ``expires_at`` (``expired_by``), the sweep pages through
all expired memories however many live ones there are, and it forgets only what the owner's aggregate has
expired too: a memory forgotten and stored again while the index lagged stays."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from symbi_context.domain import MEMORY, Forget, MemoryForgotten, MemoryStored
from symbi_context.vectors.port import MetaFilter, VectorStore

from .test_vector_store import BACKENDS, corpus, open_store


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    s = await open_store(request.param, tmp_path)
    yield s
    await s.close()


async def test_every_backend_filters_what_expired_by_a_time(store: VectorStore) -> None:
    points = corpus()  # the first ten expire at 1030, the rest never
    await store.upsert(points)
    expired = MetaFilter(expired_by=1030.0)
    assert await store.count(expired) == 10
    assert {h.id for h in await store.scroll(expired)} == {p.id for p in points[:10]}
    assert await store.count(MetaFilter(expired_by=1029.9)) == 0
    assert await store.count(MetaFilter(kinds=("short_term",), expired_by=1030.0)) == 4  # i = 0, 3, 6, 9


def stored(memory_id: str, expires_at: float | None) -> MemoryStored:
    return MemoryStored(
        memory_id=memory_id, kind="short_term", text="t", vector=b"", model="m", created_at=1.0, expires_at=expires_at
    )


def test_an_expiry_forget_skips_what_the_aggregate_has_live() -> None:
    state = MEMORY.initial("ada")
    for event in (stored("old", 10.0), stored("renewed", 500.0), stored("forever", None)):
        state = MEMORY.apply(state, event)
    forget = Forget(ids=("old", "renewed", "forever", "gone"), reason="expired", missing_ok=True, expired_by=100.0)
    assert MEMORY.decide(state, forget) == [MemoryForgotten(memory_ids=("old",), reason="expired")]
    assert MEMORY.decide(state, msgspec.structs.replace(forget, ids=("renewed",))) == []


async def stop_index(running: Any) -> None:
    await running.index.stop()
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "context:index"]
    await asyncio.wait_for(task, 10)


async def test_a_memory_stored_again_while_the_index_lags_is_not_swept(running: Any) -> None:
    service = running.api.service
    first = {"id": "m1", "kind": "short_term", "text": "Call Bob back.", "ttl_s": 60}
    out = await running.post("/v1/memories", {"agent_id": "ada", "memories": [first]}, 201)
    assert await running.index.wait_for(out["sequence"])
    await stop_index(running)  # the index keeps the first m1, expiring in a minute
    await running.post("/v1/memories/forget", {"agent_id": "ada", "ids": ["m1"]})
    again = {"id": "m1", "kind": "short_term", "text": "Call Bob back.", "ttl_s": 86_400}
    await running.post("/v1/memories", {"agent_id": "ada", "memories": [again]}, 201)
    # An hour later the index says m1 expired; the aggregate's m1 lives for another day.
    assert await service.sweep(now=time.time() + 3600) == 0
    assert "m1" in (await service.memories.load("ada", fresh=True)).state.live


async def test_the_sweep_pages_through_every_expired_memory(running: Any) -> None:
    service = running.api.service
    service.config = dataclasses.replace(service.config, sweep_page=5)
    memories = [{"kind": "short_term", "text": f"Remark {i}.", "ttl_s": 60 if i % 2 else 86_400} for i in range(16)]
    out = await running.post("/v1/memories", {"agent_id": "ada", "memories": memories}, 201)
    assert await running.index.wait_for(out["sequence"])
    # Eight expire within the hour, past a page of five: all are forgotten, the eight live ones stay.
    assert await service.sweep(now=time.time() + 3600) == 8
    live = (await service.memories.load("ada", fresh=True)).state.live
    assert set(live) == {out["ids"][i] for i in range(0, 16, 2)}
    assert await service.sweep(now=time.time() + 3600) == 0
