"""Storing memories is retry-safe when the caller names them: on the real service over a real nats-server.

A retry after a lost reply stores nothing new and answers the same id; the same id with other content is a
typed ``memory_conflict``; two replicas serving the same request at once store the memory once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from symbi_common.settings import Settings, load_settings
from symbi_context.domain import MemoryStored
from symbi_context.errors import MemoryConflict
from symbi_contracts.context.commands import StoreRequest

from .conftest import Running, service_env


async def stored_events(running: Running, owner: str, memory_id: str) -> int:
    """How many ``memory.stored`` events the owner's stream holds for ``memory_id`` (read from the stream)."""
    repo = running.api.service.memories
    records = await repo.store.load(repo.aggregate.aggregate_type, owner, repo.aggregate.codec)
    return sum(1 for r in records if isinstance(r.event, MemoryStored) and r.event.memory_id == memory_id)


def store_body(agent: str, memory_id: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"agent_id": agent, "memories": [{"id": memory_id, "text": text, **extra}]}


async def test_a_retry_after_a_lost_reply_stores_one_memory(running: Running) -> None:
    memory_id = str(uuid.uuid4())
    body = store_body("ada", memory_id, "The release train leaves on Thursdays.", tags=["release"])
    # The first request is served but its reply goes to an inbox nobody reads: the caller times out.
    nc = running.app.state.runtime.nc
    await nc.publish("cmd.context.store", msgspec.json.encode(body), reply=nc.new_inbox())
    for _ in range(200):
        if await stored_events(running, "ada", memory_id):
            break
        await asyncio.sleep(0.05)
    assert await stored_events(running, "ada", memory_id) == 1
    first_tip = (await running.api.service.memories.load("ada", fresh=True)).tip

    retried = await running.client.call("context", "store", body, dict)
    assert retried["ids"] == [memory_id]
    assert retried["sequence"] >= first_tip.sequence
    again = await running.post("/v1/memories", body, 201)  # the HTTP API answers the same way
    assert again == retried
    assert await stored_events(running, "ada", memory_id) == 1
    assert (await running.api.service.memories.load("ada", fresh=True)).tip == first_tip  # nothing appended
    found = await running.post(
        "/v1/memories/query",
        {"agent_id": "ada", "query": "when does the release train leave", "min_sequence": retried["sequence"]},
    )
    assert [r["id"] for r in found["results"]] == [memory_id]


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        ({"text": "The release train leaves on Fridays."}, ["text"]),
        ({"tags": ["other"]}, ["tags"]),
        ({"kind": "short_term", "metadata": {"k": 1}}, ["kind", "metadata"]),
    ],
)
async def test_the_same_id_with_other_content_is_a_conflict(
    running: Running, change: dict[str, Any], differs: list[str]
) -> None:
    memory_id = str(uuid.uuid4())
    original = {"text": "The release train leaves on Thursdays.", "tags": ["release"]}
    await running.client.call("context", "store", store_body("ada", memory_id, **original), dict)
    with pytest.raises(MemoryConflict) as caught:
        await running.client.call("context", "store", store_body("ada", memory_id, **{**original, **change}), dict)
    assert caught.value.code == "memory_conflict"
    assert caught.value.differs == differs
    assert memory_id in caught.value.message
    error = await running.post("/v1/memories", store_body("ada", memory_id, **{**original, **change}), 409)
    assert error["error"]["code"] == "memory_conflict"
    assert await stored_events(running, "ada", memory_id) == 1


async def test_a_batch_retry_stores_only_what_is_missing_and_refuses_repeated_ids(running: Running) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    await running.client.call("context", "store", store_body("ada", a, "First fact."), dict)
    both = {"agent_id": "ada", "memories": [{"id": a, "text": "First fact."}, {"id": b, "text": "Second fact."}]}
    answered = await running.client.call("context", "store", both, dict)
    assert answered["ids"] == [a, b]
    assert [await stored_events(running, "ada", i) for i in (a, b)] == [1, 1]
    c = str(uuid.uuid4())
    twice = {"agent_id": "ada", "memories": [{"id": c, "text": "x"}, {"id": c, "text": "x"}]}
    error = await running.post("/v1/memories", twice, 422)
    assert error["error"]["code"] == "invalid_context"
    assert "memories[1].id" in error["error"]["message"]
    assert await stored_events(running, "ada", c) == 0
    bad = await running.post("/v1/memories", store_body("ada", "not an id!", "x"), 422)
    assert "memories[0].id" in bad["error"]["message"]
    generated = await running.client.call("context", "store", {"agent_id": "ada", "memories": [{"text": "y"}]}, dict)
    assert len(generated["ids"]) == 1
    assert generated["ids"][0] not in (a, b)  # no id: one is made up, as before


async def test_two_replicas_serving_the_same_request_store_one_memory(
    running: Running,
    start: Callable[[Settings], Any],
    nats_url: str,
    keys_dir: Path,
    tmp_path: Path,
) -> None:
    second = load_settings(env=service_env(nats_url, keys_dir, tmp_path / "vectors-2"))
    async for replica in start(second):
        for round_ in range(5):
            memory_id = str(uuid.uuid4())
            body = store_body("ada", memory_id, f"Replica race number {round_}.")
            # Both replicas decide against the state they hold, then append; the slower append conflicts,
            # catches up and finds the memory stored.
            one, two = await asyncio.gather(
                running.api.store(msgspec.convert(body, StoreRequest)),
                replica.api.store(msgspec.convert(body, StoreRequest)),
            )
            assert one["ids"] == two["ids"] == [memory_id]
            assert await stored_events(running, "ada", memory_id) == 1
