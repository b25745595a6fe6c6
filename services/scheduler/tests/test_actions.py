"""The scheduler's side of the action gateway: a denied request pauses the task in place and suspends the
agent; resuming the agent has the sandbox decide again; a restart (kill -9) neither loses nor repeats a step."""

from __future__ import annotations

import signal
from typing import Any

from nats.aio.client import Client as NatsClient
from schedkit import (
    NO_MEMORY,
    WORKLOAD,
    App,
    FakeHost,
    agent_events,
    eventually,
    register_agent,
    task_events,
    until_status,
)
from symbi_common.commands import CommandClient
from symbi_contracts.lifecycle.events import CODEC as AGENT_CODEC
from symbi_contracts.lifecycle.events import AgentSuspended
from symbi_contracts.scheduler.events import TaskCompleted, TaskResumed, TaskSuspended


async def _suspensions(store: Any, agent_id: str) -> list[AgentSuspended]:
    return [r.event for r in await store.load("agent", agent_id, AGENT_CODEC) if isinstance(r.event, AgentSuspended)]


async def _agent_state(lifecycle: App, agent_id: str) -> str:
    return str((await lifecycle.json("GET", f"/v1/agents/{agent_id}"))["state"])


async def test_a_denied_action_pauses_the_task_and_a_resume_after_a_policy_change_completes_it(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    await register_agent(lifecycle, "keeper", workload={**WORKLOAD, "actions": True})
    host: FakeHost = await hosts("h1", hold=True, allow_actions=False)
    store = await make_store("scheduler")
    async with start_scheduler() as scheduler:
        view = await scheduler.json("POST", "/v1/tasks", {"agent_id": "keeper", "input": "remember"}, status=201)
        task_id = view["task_id"]
        running = await host.wait_running(task_id)
        assert running.assigned.workload.actions is True  # the sandbox learns the workload may ask for actions
        assert await host.request_action(task_id) is False

        paused = await until_status(scheduler, task_id, "paused")
        assert paused["host_id"] == "h1"
        await eventually(lambda: _is(lifecycle, "keeper", "Suspended"))
        [suspension] = await _suspensions(store, "keeper")
        assert "memory.write on notes denied" in suspension.reason
        assert task_id in suspension.reason
        assert "notes are closed" in suspension.reason
        assert suspension.policy_id == "no-memory-writes"
        [suspended] = [e for e in await task_events(store, task_id) if isinstance(e, TaskSuspended)]
        assert (suspended.reason, suspended.attempt, suspended.host_id) == ("action_denied", 1, "h1")
        assert suspended.decision == NO_MEMORY
        assert ("suspend", task_id) not in host.commands  # the sandbox froze it already

        # Resumed without a policy change: the sandbox decides again, still denies, the agent is suspended again.
        await lifecycle.json("POST", "/v1/agents/keeper/resume", {"reason": "try again"})

        async def suspended_twice() -> bool:
            return len(await _suspensions(store, "keeper")) == 2

        await eventually(suspended_twice)
        assert host.commands.count(("resume", task_id)) == 1
        assert (await until_status(scheduler, task_id, "paused"))["status"] == "paused"
        assert host.running[task_id].paused

        # The policy changed: the next resume lets the request through and the task runs on.
        host.allow_actions = True
        await lifecycle.json("POST", "/v1/agents/keeper/resume", {"reason": "notes opened"})
        await until_status(scheduler, task_id, "assigned")
        assert host.commands.count(("resume", task_id)) == 2
        await host.finish(task_id)
        done = await until_status(scheduler, task_id, "completed")
        assert done["outcome"] == "succeeded"
        await eventually(lambda: _is(lifecycle, "keeper", "Ready"))

    events = await task_events(store, task_id)
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "TaskSubmitted",
        "TaskAssigned",
        "TaskSuspended",
        "TaskResumed",
        "TaskCompleted",
    ], kinds
    resumed = next(e for e in events if isinstance(e, TaskResumed))
    assert (resumed.reason, resumed.attempt, resumed.host_id) == ("action allowed", 1, "h1")
    assert len(await _suspensions(store, "keeper")) == 2


async def test_terminating_the_agent_of_a_paused_task_ends_the_task_as_killed(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    await register_agent(lifecycle, "keeper")
    host: FakeHost = await hosts("h1", hold=True, allow_actions=False)
    async with start_scheduler() as scheduler:
        view = await scheduler.json("POST", "/v1/tasks", {"agent_id": "keeper", "input": "x"}, status=201)
        task_id = view["task_id"]
        await host.wait_running(task_id)
        await host.request_action(task_id)
        await until_status(scheduler, task_id, "paused")
        await eventually(lambda: _is(lifecycle, "keeper", "Suspended"))
        await lifecycle.json("POST", "/v1/agents/keeper/terminate", {"reason": "not trusted"})
        done = await until_status(scheduler, task_id, "completed")
        assert done["outcome"] == "killed"
        assert ("terminate", task_id) in host.commands
        assert ("resume", task_id) not in host.commands  # the pending request never happened
        assert await _agent_state(lifecycle, "keeper") == "Terminated"


async def test_cancelling_a_paused_task_kills_it_and_the_agent_finishes_it_once_resumed(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    await register_agent(lifecycle, "keeper")
    host: FakeHost = await hosts("h1", hold=True, allow_actions=False)
    async with start_scheduler() as scheduler:
        view = await scheduler.json("POST", "/v1/tasks", {"agent_id": "keeper", "input": "x"}, status=201)
        task_id = view["task_id"]
        await host.wait_running(task_id)
        await host.request_action(task_id)
        await until_status(scheduler, task_id, "paused")
        await eventually(lambda: _is(lifecycle, "keeper", "Suspended"))
        await scheduler.json("POST", f"/v1/tasks/{task_id}/cancel", {"reason": "no longer needed"})
        done = await until_status(scheduler, task_id, "completed")
        assert done["outcome"] == "killed"
        assert await _agent_state(lifecycle, "keeper") == "Suspended"  # the violation still stands
        await lifecycle.json("POST", "/v1/agents/keeper/resume", {"reason": "reviewed"})
        await eventually(lambda: _is(lifecycle, "keeper", "Ready"))  # its task is over: back to Ready
        assert ("resume", task_id) not in host.commands


async def test_a_scheduler_killed_around_a_denial_neither_loses_nor_repeats_a_step(
    lifecycle: App, hosts: Any, scheduler_process: Any, nc: NatsClient, make_store: Any
) -> None:
    await register_agent(lifecycle, "keeper")
    host: FakeHost = await hosts("h1", hold=True, allow_actions=False)
    store = await make_store("scheduler")
    client = CommandClient(nc, timeout=10.0)

    async def leading() -> bool:
        try:
            return bool((await client.call("scheduler", "status", {}, dict))["leader"])
        except Exception:
            return False

    async def status_of(task_id: str) -> str:
        try:
            return str((await client.call("scheduler", "get", {"task_id": task_id}, dict))["status"])
        except Exception:
            return ""

    first = scheduler_process()
    await eventually(leading, timeout=30)
    task_id = (await client.call("scheduler", "submit", {"agent_id": "keeper", "input": "x"}, dict))["task_id"]
    await host.wait_running(task_id)
    first.send_signal(signal.SIGKILL)
    first.wait()
    # The denial happens while no scheduler runs: the next one pauses the task and suspends the agent.
    await host.request_action(task_id)
    second = scheduler_process()
    await eventually(lambda: _is(lifecycle, "keeper", "Suspended"), timeout=30)
    assert await eventually(lambda: _has_status(status_of, task_id, "paused"))
    second.send_signal(signal.SIGKILL)
    second.wait()
    # Resumed while no scheduler runs (the policy changed meanwhile): the next one has the sandbox decide again.
    host.allow_actions = True
    await lifecycle.json("POST", "/v1/agents/keeper/resume", {"reason": "notes opened"})
    scheduler_process()
    await eventually(lambda: _has_status(status_of, task_id, "assigned"), timeout=30)
    await host.finish(task_id)
    await eventually(lambda: _has_status(status_of, task_id, "completed"), timeout=20)
    await eventually(lambda: _is(lifecycle, "keeper", "Ready"), timeout=20)

    events = await task_events(store, task_id)
    assert [type(e).__name__ for e in events] == [
        "TaskSubmitted",
        "TaskAssigned",
        "TaskSuspended",
        "TaskResumed",
        "TaskCompleted",
    ]
    completed = events[-1]
    assert isinstance(completed, TaskCompleted)
    assert completed.outcome == "succeeded"
    assert len(await _suspensions(store, "keeper")) == 1
    assert host.commands.count(("resume", task_id)) == 1
    assert (await agent_events(store, "keeper")).count("agent.resumed") == 1


async def _is(lifecycle: App, agent_id: str, state: str) -> bool:
    # The lifecycle's registry is a read model: under load it may not have projected the agent yet (404).
    r = await lifecycle.http.get(f"/v1/agents/{agent_id}")
    if r.status_code == 404:
        return False
    assert r.status_code == 200, r.text
    return bool(r.json()["state"] == state)


async def _has_status(status_of: Any, task_id: str, status: str) -> bool:
    return bool(await status_of(task_id) == status)
