"""The HTTP API through the real app: real NATS JetStream, real PostgreSQL, real keys."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from .conftest import Running

GOOD: dict[str, Any] = {
    "name": "summariser",
    "version": "1.2.0",
    "capabilities": ["web.fetch", "text.summarise"],
    "resources": {"memory_mb": 256, "cpu_cores": 0.5, "execution_timeout_s": 60},
    "security_tier": "tier2",
    "network_access": ["api.example.com"],
}


async def register(http: httpx.AsyncClient, agent_id: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    r = await http.post("/v1/agents", json={"agent_id": agent_id, "config": config or GOOD})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def post(
    http: httpx.AsyncClient, agent_id: str, action: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    return await http.post(f"/v1/agents/{agent_id}/{action}", json=body or {})


async def test_register_goes_to_ready_and_reads_back(running: Running) -> None:
    http = running.http
    r = await http.post("/v1/agents", json={"agent_id": "a1", "config": GOOD}, headers={"X-Correlation-Id": "corr-1"})
    assert r.status_code == 201, r.text
    assert r.headers["X-Correlation-Id"] == "corr-1"
    agent = r.json()
    assert agent["id"] == "a1"
    assert agent["state"] == "Ready"
    assert agent["aggregate_version"] == 2
    assert agent["sequence"] > 0
    assert agent["config"]["resources"]["memory_mb"] == 256

    # Read-your-writes from the read model.
    got = await http.get("/v1/agents/a1", params={"min_sequence": agent["sequence"]})
    assert got.status_code == 200, got.text
    view = got.json()
    assert view["state"] == "Ready"
    assert view["sequence"] == agent["sequence"]
    assert view["created_at"] is not None
    assert view["config"] == agent["config"]

    # Without an id the service picks one.
    r = await http.post("/v1/agents", json={"config": GOOD})
    assert r.status_code == 201
    assert len(r.json()["id"]) == 36


async def test_invalid_config_registers_a_failed_agent_naming_every_field(running: Running) -> None:
    http = running.http
    bad = {**GOOD, "name": "Bad Name", "resources": {"memory_mb": 1, "cpu_cores": 500}, "security_tier": "x"}
    agent = await register(http, "bad-1", bad)
    assert agent["state"] == "Failed"
    fields = {e["field"] for e in agent["errors"]}
    assert fields == {"name", "resources.memory_mb", "resources.cpu_cores", "security_tier"}
    view = (await http.get("/v1/agents/bad-1", params={"min_sequence": agent["sequence"]})).json()
    assert view["state"] == "Failed"
    assert {e["field"] for e in view["errors"]} == fields
    # A failed agent can only be terminated.
    r = await post(http, "bad-1", "assign-task", {"task_id": "t1"})
    assert r.status_code == 409
    r = await post(http, "bad-1", "terminate", {"reason": "cleanup"})
    assert r.json()["state"] == "Terminated"


async def test_undecodable_bodies_are_400_naming_the_field(running: Running) -> None:
    http = running.http
    cases = [
        ({"config": {**GOOD, "resources": {"memory_mb": "lots"}}}, "config.resources.memory_mb"),
        ({"config": {**GOOD, "colour": "blue"}}, "config.colour"),
        ({"config": {**GOOD, "resources": {"ram": 1}}}, "config.resources.ram"),
        ({"config": {"version": "1.0.0"}}, "config.name"),
        ({"config": GOOD, "extra": 1}, "extra"),
        ({"agent_id": 5, "config": GOOD}, "agent_id"),
    ]
    for body, field in cases:
        r = await http.post("/v1/agents", json=body)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["code"] == "bad_request"
        assert error["details"]["field"] == field, error
    r = await http.post("/v1/agents", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = await http.post("/v1/agents", json={"agent_id": "has.dot", "config": GOOD})
    assert r.status_code == 422
    assert r.json()["error"]["details"]["field"] == "agent_id"


async def test_full_lifecycle_and_illegal_transitions(running: Running) -> None:
    http = running.http
    await register(http, "w1")
    steps = [
        ("assign-task", {"task_id": "task-1", "description": "summarise"}, "Running"),
        ("suspend", {"reason": "egress to unlisted host", "policy_id": "net-1"}, "Suspended"),
        ("resume", {"reason": "policy cleared"}, "Running"),
        ("complete-task", {"task_id": "task-1"}, "Ready"),
        ("assign-task", {"task_id": "task-2"}, "Running"),
    ]
    for action, body, state in steps:
        r = await post(http, "w1", action, body)
        assert r.status_code == 200, r.text
        assert r.json()["state"] == state

    # Running -> Terminated is not in the table.
    r = await post(http, "w1", "terminate")
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "illegal_transition"
    assert error["details"] == {"state": "Running", "command": "terminate"}
    assert "complete_task, suspend" in error["message"]

    r = await post(http, "w1", "complete-task", {"task_id": "other"})
    assert r.status_code == 422
    assert r.json()["error"]["details"]["field"] == "task_id"

    r = await post(http, "w1", "suspend")
    r = await post(http, "w1", "terminate", {"reason": "manual override"})
    assert r.json()["state"] == "Terminated"
    r = await post(http, "w1", "resume")
    assert r.status_code == 409

    r = await http.post("/v1/agents", json={"agent_id": "w1", "config": GOOD})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "already_exists"
    r = await post(http, "nobody", "assign-task", {"task_id": "t"})
    assert r.status_code == 404
    r = await http.get("/v1/agents/nobody")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_list_paging_and_filters(running: Running) -> None:
    http = running.http
    last = 0
    for i in range(7):
        config = {**GOOD, "name": "alpha" if i % 2 == 0 else "beta"}
        last = (await register(http, f"agent-{i:02d}", config))["sequence"]
    for i in (1, 4):
        last = (await post(http, f"agent-{i:02d}", "terminate")).json()["sequence"]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, "min_sequence": last}
        if cursor:
            params["cursor"] = cursor
        page = (await http.get("/v1/agents", params=params)).json()
        pages += 1
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"agent-{i:02d}" for i in range(7)]
    assert pages == 3

    terminated = (await http.get("/v1/agents", params={"state": "Terminated"})).json()
    assert [a["id"] for a in terminated["items"]] == ["agent-01", "agent-04"]
    alpha_ready = (await http.get("/v1/agents", params={"state": "Ready", "name": "alpha"})).json()
    assert [a["id"] for a in alpha_ready["items"]] == ["agent-00", "agent-02", "agent-06"]
    assert (await http.get("/v1/agents", params={"name": "gamma"})).json() == {"items": [], "next_cursor": None}

    r = await http.get("/v1/agents", params={"state": "Sleeping"})
    assert r.status_code == 422
    assert r.json()["error"]["details"]["field"] == "state"
    r = await http.get("/v1/agents", params={"limit": 0})
    assert r.status_code == 422
    r = await http.get("/v1/agents", params={"limit": "x"})
    assert r.status_code == 400
    r = await http.get("/v1/agents", params={"cursor": "%%%"})
    assert r.status_code == 400


async def test_history_is_the_decrypted_event_log(running: Running) -> None:
    http = running.http
    await register(http, "h1")
    await post(http, "h1", "assign-task", {"task_id": "t-9"})
    r = await http.post("/v1/agents/h1/complete-task", json={"outcome": "failed"}, headers={"X-Correlation-Id": "c-7"})
    seq = r.json()["sequence"]
    events = (await http.get("/v1/agents/h1/events", params={"min_sequence": seq})).json()["items"]
    assert [e["type"] for e in events] == [
        "agent.registered",
        "agent.ready",
        "agent.task_assigned",
        "agent.task_completed",
    ]
    assert [e["aggregate_version"] for e in events] == [1, 2, 3, 4]
    assert events[0]["data"]["config"]["name"] == "summariser"
    assert events[3]["data"] == {"type": "agent.task_completed", "task_id": "t-9", "outcome": "failed"}
    assert events[3]["correlation_id"] == "c-7"
    assert events[3]["causation_id"]
    assert events[0]["correlation_id"] == events[1]["correlation_id"]  # one command, one correlation
    assert all(e["producer"] == "lifecycle" for e in events)
    later = (await http.get("/v1/agents/h1/events", params={"after_version": 2, "limit": 1})).json()["items"]
    assert [e["aggregate_version"] for e in later] == [3]
    assert (await http.get("/v1/agents/zz/events")).status_code == 404


async def test_health_and_readiness(running: Running) -> None:
    assert (await running.http.get("/healthz")).json()["status"] == "ok"
    for _ in range(100):  # the projection's consumer comes up in the background
        ready = (await running.http.get("/readyz")).json()
        if ready["ok"]:
            break
        await asyncio.sleep(0.05)
    assert ready["ok"] is True, ready
    assert ready["checks"]["projection:lifecycle_agents"] is True


async def test_openapi_documents_the_bodies(running: Running) -> None:
    doc = (await running.http.get("/openapi.json")).json()
    register_op = doc["paths"]["/v1/agents"]["post"]
    assert register_op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RegisterRequest"
    }
    schemas = doc["components"]["schemas"]
    assert {"RegisterRequest", "AgentConfig", "ResourceLimits", "AgentView", "AssignTaskRequest"} <= set(schemas)
    assert "memory_mb" in schemas["ResourceLimits"]["properties"]


async def test_oversized_bodies_are_refused_with_413(running: Running) -> None:
    big = {"agent_id": "big", "config": {**GOOD, "description": "x" * 300_000}}
    r = await running.http.post("/v1/agents", json=big)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
    assert (await running.http.get("/v1/agents/big")).status_code == 404


async def test_chunked_oversized_bodies_are_refused_too(running: Running) -> None:
    async def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 10_000

    r = await running.http.post("/v1/agents", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
