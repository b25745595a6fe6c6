"""Stopping the context service: the index stores its position before the vector store is closed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from symbi_common.settings import Settings
from symbi_context.embeddings import LocalEmbedder
from symbi_context.point_ids import INDEX_LAYOUT
from symbi_context.vectors.edge import EdgeVectorStore


async def remember(r: Any, text: str) -> int:
    out = await r.post("/v1/memories", {"agent_id": "ada", "memories": [{"text": text}]}, 201)
    assert await r.index.wait_for(out["sequence"])
    return int(out["sequence"])


async def test_stop_stores_the_index_position_before_closing_the_store(start: Any, settings: Settings) -> None:
    running = start(settings)
    r = await anext(running)
    first = await remember(r, "Ada bakes bread on Sundays.")
    for _ in range(100):  # the first position is stored at once, later ones at most every persist_interval
        if await r.index.store.position() >= first:
            break
        await asyncio.sleep(0.05)
    positions = r.index.positions
    positions.interval = 3600.0  # from now on only stopping stores it
    # A flush that takes a while (as a large index's does): the store must still be open when it runs.
    save = positions._save

    async def slow_save(sequence: int) -> None:
        await asyncio.sleep(0.3)
        await save(sequence)

    positions._save = slow_save
    last = await remember(r, "Ada waters the tomatoes every morning.")
    assert await r.index.store.position() == first < last
    # Logs captured after start-up (which configures logging); leaving the lifespan stops the runtime.
    with capture_logs() as logs, pytest.raises(StopAsyncIteration):
        await anext(running)
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []
    dimension = LocalEmbedder().dimension
    reopened = EdgeVectorStore(Path(settings.context.vector_data_path) / f"{dimension}d-l{INDEX_LAYOUT}", dimension)
    try:
        assert await reopened.position() == last
    finally:
        await reopened.close()
