"""``GET /v1/memories``: an agent's memories listed newest first, gated by ``memory.read`` like a query."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx


async def _list(running: Any, status: int = 200, **params: Any) -> Any:
    response = await running.http.get("/v1/memories", params=params)
    assert response.status_code == status, response.text
    return response.json()


async def test_an_agents_memories_are_listed_newest_first(running: Any) -> None:
    for text, kind in (("first", "long_term"), ("second", "working"), ("third", "long_term")):
        memory = {"kind": kind, "text": text, "origin": {"task_id": "t-1"}}
        out = await running.post("/v1/memories", {"agent_id": "ada", "memories": [memory]}, 201)
    await running.post("/v1/memories", {"agent_id": "bob", "memories": [{"text": "bob's own"}]}, 201)
    expired = await running.post(
        "/v1/memories", {"agent_id": "ada", "memories": [{"kind": "short_term", "text": "gone", "ttl_s": 1}]}, 201
    )
    await running.index.wait_for(max(out["sequence"], expired["sequence"]))

    await asyncio.sleep(1.2)  # the short-term memory's time to live has passed: it is not listed
    page = await _list(running, agent_id="ada")
    assert [m["text"] for m in page["items"]] == ["third", "second", "first"]
    assert page["total"] == 3
    assert page["owner"] == "ada"
    assert page["denied"] is False
    assert page["items"][0]["kind"] == "long_term"
    assert page["items"][0]["expires_at"] is None
    assert [m["text"] for m in (await _list(running, agent_id="ada", kind="working"))["items"]] == ["second"]
    limited = await _list(running, agent_id="ada", limit=1)
    assert [m["text"] for m in limited["items"]] == ["third"]
    assert limited["total"] == 3

    for params, field in (({"agent_id": "ada", "kind": "forever"}, "kind"), ({"agent_id": "ada", "limit": 0}, "limit")):
        error = (await _list(running, 422, **params))["error"]
        assert error["details"]["field"] == field
    assert (await _list(running, 422))["error"]["details"]["field"] == "agent_id"
    assert (await _list(running, 422, agent_id="a.b"))["error"]["details"]["field"] == "agent_id"


async def test_listing_another_owners_memories_needs_memory_read(running: Any, rule_policy: Any) -> None:
    out = await running.post("/v1/memories", {"agent_id": "ada", "memories": [{"text": "Ada's secret"}]}, 201)
    await running.index.wait_for(out["sequence"])
    policy = rule_policy({})
    running.api.service.decisions = policy
    denied = await _list(running, agent_id="bob", owner="ada")
    assert denied == {"owner": "ada", "items": [], "total": 0, "denied": True, "text_withheld": False}
    assert [(r.principal.id, r.action, r.resource.id) for r in policy.asked] == [("bob", "memory.read", "ada")]
    mine = await _list(running, agent_id="ada")
    assert [m["text"] for m in mine["items"]] == ["Ada's secret"]


async def test_the_memory_list_needs_an_operator_token(running: Any) -> None:
    transport = httpx.ASGITransport(app=running.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://context") as anonymous:
        response = await anonymous.get("/v1/memories", params={"agent_id": "ada"})
    assert response.status_code == 401
