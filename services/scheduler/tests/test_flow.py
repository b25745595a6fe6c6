"""A task from submission to result, against real NATS, the real lifecycle service and a played host."""

from __future__ import annotations

import base64
from typing import Any

from schedkit import App, FakeHost, agent_events, register_agent, task_events, until_status
from symbi_contracts.scheduler.events import TaskAssigned, TaskCompleted, TaskSubmitted


async def test_task_runs_to_its_result(lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any) -> None:
    await register_agent(lifecycle, "echo")
    host: FakeHost = await hosts("h1")
    async with start_scheduler() as scheduler:
        view = await scheduler.json("POST", "/v1/tasks", {"agent_id": "echo", "input": "hello"}, status=201)
        task_id = view["task_id"]
        assert view["status"] == "queued"
        done = await until_status(scheduler, task_id, "completed")
        assert done["outcome"] == "succeeded"
        assert done["exit_code"] == 0
        assert done["host_id"] == "h1"
        assert done["attempt"] == 1
        assert done["decision"]["action"] == "task.allocate"
        out = await scheduler.json("GET", f"/v1/tasks/{task_id}/output")
        assert base64.b64decode(out["data_base64"]) == b"HELLO"
        assert out["done"]
        assert out["intact"] is True
    assert host.started == [(task_id, 1)]

    store = await make_store("scheduler")
    events = await task_events(store, task_id)
    assert [type(e) for e in events] == [TaskSubmitted, TaskAssigned, TaskCompleted]
    assigned = events[1]
    assert assigned.decision.effect == "allow"
    assert assigned.decision.policies == ("enforcement-disabled",)
    assert assigned.workload.image == "symbi/busybox:1"
    assert assigned.tier in ("tier1", "tier2")

    types = await agent_events(store, "echo")
    assert types == ["agent.registered", "agent.ready", "agent.task_assigned", "agent.task_completed"]
