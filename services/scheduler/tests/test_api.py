"""The HTTP and NATS interfaces: typed errors for bad input, cancellation, status."""

from __future__ import annotations

import time
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from schedkit import App, eventually, register_agent
from symbi_common.commands import CommandClient
from symbi_common.errors import BadRequest, InfrastructureError, NotFound, ValidationError
from symbi_scheduler.application import AGENT_WAIT_S
from symbi_scheduler.domain import TaskFinished


async def error_of(app: App, method: str, path: str, body: Any, status: int) -> dict[str, Any]:
    r = await app.http.request(method, path, json=body)
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    return error


async def test_bad_submissions_get_typed_errors(lifecycle: App, start_scheduler: Any) -> None:
    await register_agent(lifecycle, "worker")
    await lifecycle.json("POST", "/v1/agents", {"agent_id": "idle", "config": {"name": "idle"}}, status=201)
    async with start_scheduler() as s:
        post = "/v1/tasks"
        assert (await error_of(s, "POST", post, {"agent_id": "ghost"}, 404))["code"] == "not_found"
        e = await error_of(s, "POST", post, {"agent_id": "worker", "priority": "urgent"}, 422)
        assert e["details"]["field"] == "priority"
        e = await error_of(s, "POST", post, {"agent_id": "idle"}, 409)
        assert e["code"] == "task_not_assignable"
        assert "workload" in e["message"]
        e = await error_of(s, "POST", post, {"agent_id": "worker", "resources": {"memory_mb": 1}}, 422)
        assert e["details"]["field"] == "resources.memory_mb"
        e = await error_of(s, "POST", post, {"agent_id": "worker", "input_base64": "***"}, 422)
        assert e["details"]["field"] == "input_base64"
        e = await error_of(s, "POST", post, {"agent_id": "worker", "colour": "red"}, 400)
        assert e["code"] == "bad_request"
        r = await s.http.post(post, content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400
        e = await error_of(s, "POST", post, {"agent_id": "worker", "task_id": "a.b"}, 422)
        assert e["details"]["field"] == "task_id"
        await s.json("POST", post, {"agent_id": "worker", "task_id": "job-1"}, status=201)
        assert (await error_of(s, "POST", post, {"agent_id": "worker", "task_id": "job-1"}, 409))["code"] == (
            "already_exists"
        )
        assert (await error_of(s, "GET", "/v1/tasks/nope", None, 404))["code"] == "not_found"
        e = await error_of(s, "GET", "/v1/tasks/job-1/output?stream=stdin", None, 422)
        assert e["details"]["field"] == "stream"


async def test_a_queued_task_can_be_cancelled_once(lifecycle: App, start_scheduler: Any) -> None:
    await register_agent(lifecycle, "worker")
    async with start_scheduler() as s:  # no host: the task stays queued
        await s.json("POST", "/v1/tasks", {"agent_id": "worker", "task_id": "t1", "priority": "low"}, status=201)
        status = await s.json("GET", "/v1/status")
        assert status["queues"]["low"] == 1
        view = await s.json("POST", "/v1/tasks/t1/cancel", {"reason": "changed my mind"})
        assert view["status"] == "cancelled"
        assert view["detail"] == "changed my mind"
        assert (await error_of(s, "POST", "/v1/tasks/t1/cancel", {}, 409))["code"] == TaskFinished.code
        assert (await s.json("GET", "/v1/status"))["queues"]["low"] == 0


async def test_nats_commands_submit_and_answer_typed_errors(
    lifecycle: App, start_scheduler: Any, nc: NatsClient
) -> None:
    await register_agent(lifecycle, "worker")
    client = CommandClient(nc, timeout=10.0)
    async with start_scheduler():

        async def answering() -> bool:  # the command subscription reaches the server asynchronously
            try:
                return bool(await client.call("scheduler", "status", {}, dict))
            except InfrastructureError:
                return False

        await eventually(answering)
        view = await client.call("scheduler", "submit", {"agent_id": "worker", "input": "hi", "priority": "high"}, dict)
        assert view["status"] == "queued"
        assert view["priority"] == "high"
        again = await client.call("scheduler", "get", {"task_id": view["task_id"]}, dict)
        assert again["task_id"] == view["task_id"]
        with pytest.raises(NotFound):
            await client.call("scheduler", "get", {"task_id": "missing"}, dict)
        with pytest.raises(ValidationError):
            await client.call("scheduler", "submit", {"agent_id": "worker", "priority": "meh"}, dict)
        with pytest.raises(BadRequest):
            await client.call("scheduler", "submit", {"agent": "worker"}, dict)
        status = await client.call("scheduler", "status", {}, dict)
        assert status["queues"]["high"] == 1


async def test_a_submission_names_the_authenticated_operator_then_the_callers_label(
    lifecycle: App, start_scheduler: Any
) -> None:
    """``X-Submitted-By`` is a label after the operator who authenticated, never a name taken on its word."""
    await register_agent(lifecycle, "worker")
    async with start_scheduler() as s:
        r = await s.http.post("/v1/tasks", json={"agent_id": "worker"}, headers={"X-Submitted-By": "console:ceo"})
        assert r.status_code == 201, r.text
        assert r.json()["submitted_by"] == "local-admin via console:ceo"
        r = await s.http.post("/v1/tasks", json={"agent_id": "worker"})
        assert r.json()["submitted_by"] == "local-admin"


async def test_an_agent_never_registered_is_refused_at_once_and_a_new_one_is_waited_for(
    lifecycle: App, start_scheduler: Any
) -> None:
    """No event of the agent in the stream: 404 without waiting out the time a just-registered agent gets to
    reach this replica's model; an agent registered right before the submission still gets its task."""
    async with start_scheduler() as s:
        for agent_id in ("ghost", "a.b", "*"):
            started = time.monotonic()
            e = await error_of(s, "POST", "/v1/tasks", {"agent_id": agent_id}, 404)
            assert e["code"] == "not_found"
            assert time.monotonic() - started < AGENT_WAIT_S / 2, agent_id
        await register_agent(lifecycle, "fresh")
        await s.json("POST", "/v1/tasks", {"agent_id": "fresh", "task_id": "t-fresh"}, status=201)
