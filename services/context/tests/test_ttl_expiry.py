"""A memory of any kind stored with ``ttl_s`` expires: past its ``expires_at`` no read or search serves it (before
any sweep), and the sweep forgets it as a ``memory.forgotten`` event with reason ``expired``, on each backend
the service runs on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from symbi_common.settings import load_settings
from symbi_context.domain import MEMORY, MemoryForgotten
from symbi_context.vectors.port import MetaFilter

from .conftest import service_env

MEMORIES = [
    {"id": "brief", "kind": "long_term", "text": "The gate code is 4711 until Friday.", "ttl_s": 3},
    {
        "id": "draft",
        "kind": "working",
        "text": "Draft note: the gate code 4711 goes in the report.",
        "ttl_s": 3,
        "origin": {"task_id": "t-report"},
    },
    {"id": "kept", "kind": "long_term", "text": "The gate next to the code lock is painted green."},
]


async def served(running: Any, sequence: int) -> tuple[set[str], set[str]]:
    """The ids a search and a listing of ada's memories serve."""
    query = {"agent_id": "ada", "query": "gate code", "min_sequence": sequence}
    found = {r["id"] for r in (await running.post("/v1/memories/query", query))["results"]}
    response = await running.http.get("/v1/memories", params={"agent_id": "ada"})
    assert response.status_code == 200, response.text
    return found, {m["id"] for m in response.json()["items"]}


@pytest.mark.parametrize("backend", ["embedded", "lancedb"])
async def test_a_long_term_or_working_memory_with_a_ttl_expires_and_is_swept(
    backend: str, nats_url: str, keys_dir: Path, tmp_path: Path, start: Any
) -> None:
    vectors = tmp_path / "vectors"
    settings = load_settings(env=service_env(nats_url, keys_dir, vectors, SYMBIONT_VECTOR_BACKEND=backend))
    async for running in start(settings):
        service = running.api.service
        out = await running.post("/v1/memories", {"agent_id": "ada", "memories": MEMORIES}, 201)
        assert await running.index.wait_for(out["sequence"])
        # Before their expiry all three are served.
        assert await served(running, out["sequence"]) == ({"brief", "draft", "kept"},) * 2
        assert await service.sweep() == 0

        # Past the expiry the memories with a time to live are no longer served, though nothing swept them yet.
        stored = (await service.memories.load("ada", fresh=True)).state.live
        expiry = max(e.expires_at for e in stored.values() if e.expires_at is not None)
        await asyncio.sleep(max(0.0, expiry - time.time()) + 0.1)
        assert set(stored) == {"brief", "draft", "kept"}
        assert await served(running, out["sequence"]) == ({"kept"}, {"kept"})

        # The sweep forgets both as one event of the owner's aggregate, and the index drops them.
        assert await service.sweep() == 2
        assert set((await service.memories.load("ada", fresh=True)).state.live) == {"kept"}
        last = (await service.memories.store.load(MEMORY.aggregate_type, "ada", MEMORY.codec))[-1]
        assert isinstance(last.event, MemoryForgotten)
        assert last.event.reason == "expired"
        assert set(last.event.memory_ids) == {"brief", "draft"}
        assert await running.index.wait_for(last.sequence)
        assert await service.store.count(MetaFilter(owners=("ada",))) == 1
        assert await service.sweep() == 0
