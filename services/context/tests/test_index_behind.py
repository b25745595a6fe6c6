"""Reads and filtered forgets that depend on the index having a write: with the index halted or behind they are
refused (503 ``index_behind``), never answered from the stale index as if it were current. A forget by filter
sees a memory stored just before it, refuses a misspelt kind, and refuses to forget only some of too many
matches."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any


async def stop_index(running: Any) -> None:
    """Stop the index follower and wait until it has ended: nothing written from now on reaches the index."""
    await running.index.stop()
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "context:index"]
    await asyncio.wait_for(task, 10)


def wait_briefly(running: Any) -> None:
    service = running.api.service
    service.config = dataclasses.replace(service.config, index_wait_s=0.3)


async def remember(running: Any, text: str, **memory: Any) -> dict[str, Any]:
    body = {"agent_id": "ada", "memories": [{"text": text, **memory}]}
    out: dict[str, Any] = await running.post("/v1/memories", body, 201)
    return out


def assert_behind(response: Any, wanted: int) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "index_behind"
    assert error["details"]["wanted"] == wanted
    assert error["details"]["position"] < wanted


async def test_a_read_of_a_write_the_index_lacks_is_refused(running: Any) -> None:
    wait_briefly(running)
    await stop_index(running)
    stored = await remember(running, "The vault code is under the blue teapot.")
    seq = stored["sequence"]
    query = {"agent_id": "ada", "query": "where is the vault code", "min_sequence": seq}
    assert_behind(await running.http.post("/v1/memories/query", json=query), seq)
    rag = {"agent_id": "ada", "query": "where is the vault code", "min_sequence": seq, "generate": False}
    assert_behind(await running.http.post("/v1/rag/query", json=rag), seq)
    # A read that names no write it depends on is answered from the index as it is.
    free = await running.post("/v1/memories/query", {"agent_id": "ada", "query": "where is the vault code"})
    assert free["results"] == []


async def test_a_forget_by_filter_waits_for_the_owners_writes(running: Any) -> None:
    stored = await remember(running, "Paris is the capital of France.", tags=["geo"])
    # Right after the store, without waiting: the memory is found.
    forgot = await running.post("/v1/memories/forget", {"agent_id": "ada", "where": {"tags": ["geo"]}})
    assert forgot["ids"] == stored["ids"]
    # With the index stopped it cannot see the owner's last write: refused, not an empty success.
    wait_briefly(running)
    await stop_index(running)
    again = await remember(running, "Berlin is the capital of Germany.", tags=["geo"])
    response = await running.http.post("/v1/memories/forget", json={"agent_id": "ada", "where": {"tags": ["geo"]}})
    assert_behind(response, again["sequence"])


async def test_a_forget_by_filter_checks_kinds_and_refuses_too_many_matches(running: Any) -> None:
    typo = await running.http.post("/v1/memories/forget", json={"agent_id": "ada", "where": {"kinds": ["long-term"]}})
    assert typo.status_code == 422, typo.text
    assert typo.json()["error"]["code"] == "invalid_context"
    assert typo.json()["error"]["details"]["field"] == "where.kinds"
    service = running.api.service
    service.config = dataclasses.replace(service.config, forget_where_limit=2)
    body = {"agent_id": "ada", "memories": [{"text": f"Remark {i}.", "tags": ["chat"]} for i in range(3)]}
    stored = await running.post("/v1/memories", body, 201)
    too_many = await running.http.post("/v1/memories/forget", json={"agent_id": "ada", "where": {"tags": ["chat"]}})
    assert too_many.status_code == 422, too_many.text
    assert too_many.json()["error"]["details"]["field"] == "where"
    assert "more than 2 memories" in too_many.json()["error"]["message"]
    # One forgotten by id, the filter (with a valid kind) matches two: it forgets them.
    await running.post("/v1/memories/forget", {"agent_id": "ada", "ids": [stored["ids"][0]]})
    where = {"tags": ["chat"], "kinds": ["long_term"]}
    forgot = await running.post("/v1/memories/forget", {"agent_id": "ada", "where": where})
    assert sorted(forgot["ids"]) == sorted(stored["ids"][1:])


async def test_a_read_of_a_sequence_past_the_streams_end_is_invalid_not_behind(running: Any) -> None:
    """No write answered a sequence past the stream's last event, so no wait could bring it: 422 on
    ``min_sequence`` at once, not a 503 that says to retry."""
    stored = await remember(running, "The lab opens at nine.")
    beyond = stored["sequence"] + 1_000_000
    for path, body in (
        ("/v1/memories/query", {"agent_id": "ada", "query": "lab", "min_sequence": beyond}),
        ("/v1/rag/query", {"agent_id": "ada", "query": "lab", "min_sequence": beyond, "generate": False}),
    ):
        response = await running.http.post(path, json=body)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert (error["code"], error["details"]["field"]) == ("invalid_context", "min_sequence")
        assert "past the last stored event" in error["message"]
    # The write's own sequence is still read-your-writes.
    found = await running.post(
        "/v1/memories/query", {"agent_id": "ada", "query": "lab", "min_sequence": stored["sequence"]}
    )
    assert found["results"], found
