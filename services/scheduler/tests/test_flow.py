"""A task from submission to result, against real NATS, the real lifecycle service and a played host."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from schedkit import App, FakeHost, agent_events, register_agent, task_events, until_status
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC, ExecutionExited, ExecutionOutput
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


@pytest.mark.parametrize(
    ("chunk", "tail", "outputs", "in_tail"),
    [
        (64 * 1024, True, 0, b"HELLO WORLD"),  # a short result: all of it in the terminal event
        (4, True, 2, b"RLD"),  # streamed in chunks, the rest in the terminal event
        (64 * 1024, False, 1, b""),  # as the previous version sent it: no tail
        (4, False, 3, b""),
    ],
)
async def test_the_result_reads_back_the_same_however_it_was_sent(
    lifecycle: App,
    start_scheduler: Any,
    hosts: Any,
    make_store: Any,
    chunk: int,
    tail: bool,
    outputs: int,
    in_tail: bytes,
) -> None:
    """The output API reassembles a result from its ``execution.output`` events and its terminal event's tail
    alike (events written before the tail existed included), and checks it against the terminal's digest."""
    await register_agent(lifecycle, "echo")
    await hosts("h1", chunk=chunk, tail=tail)
    async with start_scheduler() as scheduler:
        view = await scheduler.json("POST", "/v1/tasks", {"agent_id": "echo", "input": "hello world"}, status=201)
        task_id = view["task_id"]
        done = await until_status(scheduler, task_id, "completed")
        assert done["output_bytes"] == {"stdout": 11}
        out = await scheduler.json("GET", f"/v1/tasks/{task_id}/output")
        assert base64.b64decode(out["data_base64"]) == b"HELLO WORLD"
        assert (out["intact"], out["total_bytes"], out["next_offset"], out["done"]) == (True, 11, 11, True)
        rest = await scheduler.json("GET", f"/v1/tasks/{task_id}/output?after=6")
        assert base64.b64decode(rest["data_base64"]) == b"WORLD"
        assert rest["next_offset"] == 11

    store = await make_store("scheduler")
    events = [r.event for r in await store.load("execution", task_id, EXECUTION_CODEC)]
    assert sum(isinstance(e, ExecutionOutput) for e in events) == outputs
    [exited] = [e for e in events if isinstance(e, ExecutionExited)]
    assert b"".join(c.data for c in exited.tail) == in_tail
