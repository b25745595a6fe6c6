"""A memory's point is keyed by its owner and its id: any id an agent may name is indexed, and two owners'
memories with the same id stay two memories (the real service over a real nats-server)."""

from __future__ import annotations

from typing import Any

from .conftest import Running


async def memories(running: Running, agent: str, sequence: int) -> dict[str, str]:
    """The agent's own memories once the index has reached ``sequence``: id → text."""
    found = await running.post(
        "/v1/memories/query", {"agent_id": agent, "query": "launch checklist", "min_sequence": sequence}
    )
    return {r["id"]: r["text"] for r in found["results"]}


def body(agent: str, memory_id: str, text: str) -> dict[str, Any]:
    return {"agent_id": agent, "memories": [{"id": memory_id, "text": text}]}


async def test_any_memory_id_is_indexed_and_each_owner_keeps_its_own(running: Running) -> None:
    """Before, an id that is no UUID stopped the index for every agent (the engine refused the point, the
    follower halted on it), and one owner's memory overwrote another's of the same id."""
    ada, bob = "Ada's launch checklist lives in the wiki.", "Bob's launch checklist is on paper."
    await running.post("/v1/memories", body("ada", "note-1", ada), 201)
    last = await running.post("/v1/memories", body("bob", "note-1", bob), 201)
    assert (await memories(running, "ada", last["sequence"])) == {"note-1": ada}
    assert (await memories(running, "bob", last["sequence"])) == {"note-1": bob}
    listed = (await running.http.get("/v1/memories", params={"agent_id": "ada"})).json()
    assert [m["id"] for m in listed["items"]] == ["note-1"]
    forgot = await running.post("/v1/memories/forget", {"agent_id": "bob", "ids": ["note-1"]})
    assert (await memories(running, "bob", forgot["sequence"])) == {}
    assert (await memories(running, "ada", forgot["sequence"])) == {"note-1": ada}
    assert running.index.follower.halted is None
