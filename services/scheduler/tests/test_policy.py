"""``task.allocate``: a denial is its own event and suspends the agent through the lifecycle; clearing the
violation (resume) puts the task back in the queue."""

from __future__ import annotations

from typing import Any

from schedkit import App, DenyAgents, FakeHost, agent_events, eventually, register_agent, task_events, until_status
from symbi_common.decisions import AllowWithConditions, Condition, Decision, DecisionRequest
from symbi_common.errors import InfrastructureError
from symbi_contracts.lifecycle.config import ResourceLimits
from symbi_contracts.scheduler.events import TaskAssigned, TaskResumed, TaskSuspended


async def test_denied_allocation_suspends_the_agent_until_cleared(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    await register_agent(lifecycle, "shady")
    host: FakeHost = await hosts("h1")
    point = DenyAgents("shady")
    store = await make_store("scheduler")
    async with start_scheduler(decisions=point) as scheduler:
        view = await scheduler.json("POST", "/v1/tasks", {"agent_id": "shady", "input": "x"}, status=201)
        task_id = view["task_id"]
        denied = await until_status(scheduler, task_id, "denied")
        assert denied["decision"]["effect"] == "deny"
        assert denied["decision"]["policies"] == ["no-untrusted-hosts"]
        request = point.requests[0]
        assert request.action == "task.allocate"
        assert request.resource.uid == 'Host::"h1"'
        assert request.principal.uid == 'Agent::"shady"'

        async def suspended() -> bool:
            return (await agent_events(store, "shady"))[-1] == "agent.suspended"

        await eventually(suspended)
        assert host.started == []

        point.denied.clear()  # the policy changed; an operator clears the violation
        await lifecycle.json("POST", "/v1/agents/shady/resume", {"reason": "policy fixed"})
        done = await until_status(scheduler, task_id, "completed")
        assert done["outcome"] == "succeeded"
        assert done["decision"]["effect"] == "allow"

        async def ready_again() -> bool:
            return (await agent_events(store, "shady"))[-1] == "agent.task_completed"

        await eventually(ready_again)
    events = await task_events(store, task_id)
    suspensions = [e for e in events if isinstance(e, TaskSuspended)]
    assert len(suspensions) == 1
    assert suspensions[0].reason == "policy_denied"
    assert suspensions[0].decision is not None
    assert suspensions[0].decision.reason == "host pool closed to this agent"
    assert suspensions[0].decision.policy_version == 7
    assert any(isinstance(e, TaskResumed) for e in events)
    assigned = [e for e in events if isinstance(e, TaskAssigned)]
    assert [a.attempt for a in assigned] == [1]
    assert assigned[0].decision.policies == ("allow-known",)
    assert host.started == [(task_id, 1)]


async def test_sandbox_refusing_on_policy_grounds_suspends_the_agent(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    await register_agent(lifecycle, "refused")
    await hosts("strict", refuse=True)
    store = await make_store("scheduler")
    async with start_scheduler() as scheduler:
        view = await scheduler.json("POST", "/v1/tasks", {"agent_id": "refused", "input": "x"}, status=201)
        done = await until_status(scheduler, view["task_id"], "completed")
        assert done["outcome"] == "refused"

        async def suspended() -> bool:
            return (await agent_events(store, "refused"))[-1] == "agent.suspended"

        await eventually(suspended)
        # Clearing the violation lets the agent finish the (already completed) task and become Ready.
        await lifecycle.json("POST", "/v1/agents/refused/resume", {"reason": "cleared"})

        async def ready() -> bool:
            return (await agent_events(store, "refused"))[-1] == "agent.task_completed"

        await eventually(ready)


async def test_suspending_an_agent_pauses_its_running_task_until_resumed(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    await register_agent(lifecycle, "worker")
    host: FakeHost = await hosts("h1", hold=True)
    async with start_scheduler() as scheduler:
        view = await scheduler.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "x"}, status=201)
        task_id = view["task_id"]
        execution = await host.wait_running(task_id)
        await lifecycle.json("POST", "/v1/agents/worker/suspend", {"reason": "data exfiltration attempt"})
        paused = await until_status(scheduler, task_id, "paused")
        assert paused["attempt"] == 1
        assert execution.paused
        await lifecycle.json("POST", "/v1/agents/worker/resume", {"reason": "cleared"})
        await until_status(scheduler, task_id, "assigned")

        async def running_again() -> bool:
            return not execution.paused

        await eventually(running_again)
        await host.finish(task_id)
        done = await until_status(scheduler, task_id, "completed")
        assert done["outcome"] == "succeeded"
    events = await task_events(await make_store("scheduler"), task_id)
    suspended = [e for e in events if isinstance(e, TaskSuspended)]
    assert [e.reason for e in suspended] == ["agent_suspended"]
    assert sum(isinstance(e, TaskResumed) for e in events) == 1


class CapEverything:
    """A decision point (the DecisionPoint port) that allows every allocation with ``cap_resources`` conditions."""

    version = 7

    async def decide(self, request: DecisionRequest) -> Decision:
        conditions = (
            Condition(kind="cap_resources", params={"memory_mb": 256, "cpu_cores": 2}, policy="a"),
            Condition(kind="cap_resources", params={"memory_mb": 128.9, "execution_timeout_s": 30}, policy="b"),
        )
        return AllowWithConditions(conditions=conditions, policies=("a", "b"), policy_version=7)

    async def decide_batch(self, requests: list[DecisionRequest]) -> list[Decision]:
        return [await self.decide(r) for r in requests]


async def test_cap_resources_conditions_of_the_allocation_lower_the_task_limits(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    await register_agent(lifecycle, "capped", resources={"memory_mb": 512, "cpu_cores": 1.0})
    host: FakeHost = await hosts("h1")
    store = await make_store("scheduler")
    async with start_scheduler(decisions=CapEverything()) as scheduler:
        view = await scheduler.json("POST", "/v1/tasks", {"agent_id": "capped", "input": "x"}, status=201)
        await until_status(scheduler, view["task_id"], "completed")
    [assigned] = [e for e in await task_events(store, view["task_id"]) if isinstance(e, TaskAssigned)]
    # The tightest cap of each resource, never raised (cpu stays 1.0), truncated to whole MB.
    assert assigned.limits == ResourceLimits(
        memory_mb=128, cpu_cores=1.0, disk_io_mbps=100, network_io_mbps=10, execution_timeout_s=30.0
    )
    assert host.started == [(view["task_id"], 1)]


class PolicyOutage(DenyAgents):
    """A decision point that cannot be asked (the policy service unreachable) until ``down`` is cleared."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def decide(self, request: Any) -> Any:
        if self.down:
            self.requests.append(request)
            raise InfrastructureError("no policy service is answering cmd.policy.decide; is it running?")
        return await super().decide(request)


async def test_a_policy_outage_places_nothing_and_suspends_no_one(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    await register_agent(lifecycle, "patient")
    host: FakeHost = await hosts("h1")
    point = PolicyOutage()
    store = await make_store("scheduler")
    async with start_scheduler(decisions=point) as scheduler:
        view = await scheduler.json("POST", "/v1/tasks", {"agent_id": "patient", "input": "x"}, status=201)
        task_id = view["task_id"]

        async def asked_twice() -> bool:
            return len(point.requests) >= 2  # tried, denied for want of a decision, tried again

        await eventually(asked_twice)
        queued = await scheduler.json("GET", f"/v1/tasks/{task_id}")
        assert queued["status"] == "queued"
        assert host.started == []
        assert "agent.suspended" not in await agent_events(store, "patient")

        point.down = False  # the policy service is back: the task is decided and placed
        done = await until_status(scheduler, task_id, "completed")
        assert done["outcome"] == "succeeded"
        assert done["decision"]["effect"] == "allow"
        assert done["decision"]["point"] == "scheduler.task_allocate"
        assert done["decision"]["decision_id"]
