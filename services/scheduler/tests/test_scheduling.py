"""Priority order, capacity on several hosts and preemption, end to end over real NATS."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from schedkit import App, FakeHost, agent_events, eventually, register_agent, task_events, until_status
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC, TERMINAL_TYPES, ExecutionStarted
from symbi_contracts.scheduler.events import CODEC, TaskAssigned, TaskPreempted, TaskResumed, TaskSuspended

ONE_CPU = {"cpu_cores": 1.0, "memory_mb": 256}


async def submit(scheduler: App, agent_id: str, priority: str = "normal", text: str = "x", **extra: Any) -> str:
    body = {"agent_id": agent_id, "input": text, "priority": priority, **extra}
    view = await scheduler.json("POST", "/v1/tasks", body, status=201)
    return str(view["task_id"])


async def test_queued_tasks_start_in_priority_order(lifecycle: App, start_scheduler: Any, hosts: Any) -> None:
    for name in ("blocker", "low", "normal", "high"):
        await register_agent(lifecycle, name, resources=ONE_CPU)
    host: FakeHost = await hosts("h1", cpu_cores=1.0, hold=True)
    async with start_scheduler() as scheduler:
        first = await submit(scheduler, "blocker")
        await host.wait_running(first)
        low = await submit(scheduler, "low", "low")
        normal = await submit(scheduler, "normal", "normal")
        high = await submit(scheduler, "high", "high")
        status = await scheduler.json("GET", "/v1/status")
        assert status["queues"] == {"low": 1, "normal": 1, "high": 1, "critical": 0}
        assert status["hosts"][0]["cpu_free"] == 0.0
        order = []
        for _ in range(3):
            running = next(iter(host.running))
            await host.finish(running)
            order.append(await eventually(lambda previous=running: _next_running(host, previous)))
        await host.finish(order[-1])
        assert order == [high, normal, low]
        for task_id in (first, low, normal, high):
            assert (await until_status(scheduler, task_id, "completed"))["outcome"] == "succeeded"


async def _next_running(host: FakeHost, previous: str) -> str | None:
    return next((t for t in host.running if t != previous), None)


async def test_placement_honours_capacity_on_several_hosts(lifecycle: App, start_scheduler: Any, hosts: Any) -> None:
    agents = [f"worker-{i}" for i in range(8)]
    for name in agents:
        await register_agent(lifecycle, name, resources=ONE_CPU)
    fleet: list[FakeHost] = [await hosts(f"h{i}", cpu_cores=2.0, memory_mb=1024, hold=True) for i in range(3)]
    async with start_scheduler(strategy="first_fit") as scheduler:
        tasks = [await submit(scheduler, name) for name in agents]

        async def six_running() -> bool:
            return sum(len(h.running) for h in fleet) == 6

        await eventually(six_running)
        await asyncio.sleep(0.5)  # nothing more may start while the hosts are full
        assert [len(h.running) for h in fleet] == [2, 2, 2]
        status = await scheduler.json("GET", "/v1/status")
        assert sum(status["queues"].values()) == 2
        assert all(h["cpu_free"] == 0.0 and h["memory_free_mb"] == 512 for h in status["hosts"])
        assert len(status["running"]) == 6

        async def all_completed() -> bool:
            for h in fleet:
                for task_id in list(h.running):
                    await h.finish(task_id)
            views = [await scheduler.json("GET", f"/v1/tasks/{t}") for t in tasks]
            return all(v["status"] == "completed" for v in views)

        await eventually(all_completed, interval=0.2)
        assert max(h.max_running for h in fleet) == 2
        assert sum(len(h.started) for h in fleet) == 8


async def test_critical_task_evicts_the_lowest_priority_task(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    for name in ("background", "routine", "urgent"):
        await register_agent(lifecycle, name, resources=ONE_CPU)
    host: FakeHost = await hosts("h1", cpu_cores=2.0, hold=True)
    async with start_scheduler(preemption="requeue") as scheduler:
        low = await submit(scheduler, "background", "low")
        normal = await submit(scheduler, "routine", "normal")
        await host.wait_running(low)
        await host.wait_running(normal)
        critical = await submit(scheduler, "urgent", "critical")
        await host.wait_running(critical)
        assert ("terminate", low) in host.commands
        assert normal in host.running
        view = await until_status(scheduler, low, "queued")
        assert view["attempt"] == 1
        await host.finish(critical)
        await host.wait_running(low)  # re-queued and started again, as attempt 2
        await host.finish(low)
        await host.finish(normal)
        done = await until_status(scheduler, low, "completed")
        assert done["attempt"] == 2
        assert done["outcome"] == "succeeded"
        store = await make_store("scheduler")
        # The evicted agent went back to Ready (its task cancelled) and ran again.
        expected = ["agent.registered", "agent.ready"] + ["agent.task_assigned", "agent.task_completed"] * 2

        async def agent_history() -> bool:
            return await agent_events(store, "background") == expected

        await eventually(agent_history)
    events = await task_events(store, low)
    preempted = [e for e in events if isinstance(e, TaskPreempted)]
    assert len(preempted) == 1
    assert preempted[0].by_task == critical
    assert preempted[0].reason == "preempted"
    assert preempted[0].requeued
    assert [e.attempt for e in events if isinstance(e, TaskAssigned)] == [1, 2]


@pytest.mark.parametrize("fail_once", [(), ("suspend", "resume")])
async def test_critical_task_pauses_the_victim_in_suspend_mode(
    fail_once: tuple[str, ...], lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    """``fail_once``: the host does not get to the first suspend and the first resume; the task is recorded
    paused and resumed only once the host did it (before, a resume that failed was recorded, and the task stayed
    frozen on its host for good)."""
    for name in ("background", "urgent"):
        await register_agent(lifecycle, name, resources=ONE_CPU)
    host: FakeHost = await hosts("h1", cpu_cores=1.0, hold=True, fail_once=fail_once)
    async with start_scheduler(preemption="suspend") as scheduler:
        low = await submit(scheduler, "background", "low")
        execution = await host.wait_running(low)
        critical = await submit(scheduler, "urgent", "critical")
        await host.wait_running(critical)
        assert execution.paused
        assert (await task_view(scheduler, low))["status"] == "paused"
        await host.finish(critical)

        async def resumed() -> bool:
            return not execution.paused

        await eventually(resumed)
        await host.finish(low)
        done = await until_status(scheduler, low, "completed")
        assert done["attempt"] == 1
    store = await make_store("scheduler")
    events = await task_events(store, low)
    suspended = [e for e in events if isinstance(e, TaskSuspended)]
    assert len(suspended) == 1
    assert suspended[0].reason == "preempted"
    assert suspended[0].by_task == critical
    assert len([e for e in events if isinstance(e, TaskResumed)]) == 1
    for action in ("suspend", "resume"):
        assert host.commands.count((action, low)) == (2 if fail_once else 1)


async def task_view(scheduler: App, task_id: str) -> dict[str, Any]:
    result: dict[str, Any] = await scheduler.json("GET", f"/v1/tasks/{task_id}")
    return result


async def test_a_task_no_host_could_ever_run_is_refused_at_submit(
    lifecycle: App, start_scheduler: Any, hosts: Any
) -> None:
    await register_agent(lifecycle, "huge", resources={"cpu_cores": 1.0, "memory_mb": 64 * 1024})
    await register_agent(lifecycle, "small", resources=ONE_CPU)
    await hosts("h1", cpu_cores=2.0, memory_mb=1024)
    async with start_scheduler() as scheduler:

        async def host_known() -> bool:
            return bool((await scheduler.json("GET", "/v1/status"))["hosts"])

        await eventually(host_known)
        body = {"agent_id": "huge", "input": "x"}
        refused = await scheduler.json("POST", "/v1/tasks", body, status=409)
        assert "can never be placed" in str(refused)
        assert "65536 MB" in str(refused)
        assert "1024 MB" in str(refused)
        # Asking for less than the agent's limit makes it placeable; a fitting task is accepted as before.
        small_enough = {**body, "resources": {"memory_mb": 512}}
        assert (await scheduler.json("POST", "/v1/tasks", small_enough, status=201))["task_id"]
        assert await submit(scheduler, "small")


async def test_a_queued_task_says_why_it_waits(lifecycle: App, start_scheduler: Any, hosts: Any) -> None:
    await register_agent(lifecycle, "huge", resources={"cpu_cores": 1.0, "memory_mb": 64 * 1024})
    async with start_scheduler() as scheduler:
        # No host is known at submission: accepted, and the task says what it waits for.
        task = await submit(scheduler, "huge")
        view = await scheduler.json("GET", f"/v1/tasks/{task}")
        assert view["status"] == "queued"
        assert view["wait_reason"] == "no sandbox host is alive"
        await hosts("h1", cpu_cores=2.0, memory_mb=1024)

        async def never_runs() -> bool:
            reason = (await scheduler.json("GET", f"/v1/tasks/{task}"))["wait_reason"]
            return reason.startswith("no host could ever run it") and "65536 MB" in reason

        await eventually(never_runs)


async def test_a_victim_the_host_is_still_starting_is_paused_only_once_the_host_froze_it(
    lifecycle: App, start_scheduler: Any, hosts: Any
) -> None:
    """The host answers ``unknown_execution`` to the suspend while it is still starting the victim: that is not a
    pause (before, the task was recorded paused, its CPU given to the critical task, and the host then started it
    unfrozen next to it). The leader asks again until the host froze the run."""
    for name in ("background", "urgent"):
        await register_agent(lifecycle, name, resources=ONE_CPU)
    host: FakeHost = await hosts("h1", cpu_cores=1.0, hold=True, starting=1.0)
    async with start_scheduler(preemption="suspend") as scheduler:
        low = await submit(scheduler, "background", "low")
        await until_status(scheduler, low, "assigned")
        critical = await submit(scheduler, "urgent", "critical")
        await host.wait_running(critical)
        assert host.running[low].paused  # started, then frozen: never running next to the critical task
        assert host.commands.count(("suspend", low)) >= 2
        assert (await task_view(scheduler, low))["status"] == "paused"


@pytest.mark.parametrize(
    "victim_host",
    [
        {"starting": 1.0},  # still checking the victim when asked to stop it: it refuses the attempt then
        {"starting": 1.0, "honours_stop": False},  # … a host that starts it all the same: stopped once it runs
        {"fail_once": ("terminate",)},  # the victim runs and its host does not answer the first stop
    ],
    ids=["refused-before-start", "started-anyway", "no-answer"],
)
async def test_a_preempted_victim_goes_back_to_the_queue_only_once_its_attempt_has_ended(
    victim_host: dict[str, Any], lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    """Before, ``task.preempted`` was appended before the host had stopped the victim (the host's answer was not
    looked at) and the task was requeued at once: its attempt 2 ran on another host, and the critical task on
    the victim's host, while attempt 1 was still starting or running there. Now attempt 1 is refused or
    stopped, and its end recorded, before the task is requeued and before the critical task starts."""
    await register_agent(lifecycle, "background", resources=ONE_CPU)
    await register_agent(lifecycle, "urgent", resources={"cpu_cores": 1.0, "memory_mb": 2048})
    h1: FakeHost = await hosts("h1", cpu_cores=1.0, memory_mb=4096, hold=True, **victim_host)
    h2: FakeHost = await hosts("h2", cpu_cores=1.0, memory_mb=1024, hold=True)  # too small for the critical task
    async with start_scheduler(strategy="first_fit", preemption="requeue") as scheduler:
        low = await submit(scheduler, "background", "low")
        if "starting" in victim_host:
            await until_status(scheduler, low, "assigned")
        else:
            await h1.wait_running(low)
        critical = await submit(scheduler, "urgent", "critical")
        await h1.wait_running(critical, timeout=15.0)
        await h2.wait_running(low, timeout=15.0)
        assert (await task_view(scheduler, low))["attempt"] == 2
    store = await make_store("scheduler")
    task = await store.load("task", low, CODEC)
    execution = await store.load("execution", low, EXECUTION_CODEC)
    ends = [r.sequence for r in execution if isinstance(r.event, TERMINAL_TYPES) and r.event.attempt == 1]
    assert ends, "attempt 1's end was never recorded"
    preempted = [r for r in task if isinstance(r.event, TaskPreempted)]
    assert [(r.event.attempt, r.event.reason, r.event.by_task) for r in preempted] == [(1, "preempted", critical)]
    second = next(r.sequence for r in task if isinstance(r.event, TaskAssigned) and r.event.attempt == 2)
    assert ends[0] < preempted[0].sequence < second
    critical_started = [
        r.sequence
        for r in await store.load("execution", critical, EXECUTION_CODEC)
        if isinstance(r.event, ExecutionStarted)
    ]
    assert critical_started
    assert ends[0] < critical_started[0]
    attempt_1_started = (low, 1) in h1.started
    assert attempt_1_started == ("starting" not in victim_host or not victim_host.get("honours_stop", True))
