"""Crashes and failures: a lost host, a kill -9 of the scheduler mid-run, and the lease between replicas."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from nats.aio.client import Client as NatsClient
from schedkit import App, FakeHost, agent_events, eventually, register_agent, task_events, until_status
from symbi_common.commands import CommandClient
from symbi_contracts.scheduler.events import TaskAssigned, TaskCompleted, TaskPreempted


async def test_tasks_of_a_lost_host_are_requeued(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    await register_agent(lifecycle, "worker")
    doomed: FakeHost = await hosts("doomed", hold=True)
    async with start_scheduler(host_lost_after_s="2") as scheduler:
        view = await scheduler.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "x"}, status=201)
        task_id = view["task_id"]
        await doomed.wait_running(task_id)
        survivor: FakeHost = await hosts("survivor")
        doomed.beating = False  # the host dies: no more heartbeats
        done = await until_status(scheduler, task_id, "completed", timeout=15)
        assert done["host_id"] == "survivor"
        assert done["attempt"] == 2
        assert done["outcome"] == "succeeded"
        status = await scheduler.json("GET", "/v1/status")
        assert {h["host_id"]: h["alive"] for h in status["hosts"]} == {"doomed": False, "survivor": True}
    assert survivor.started == [(task_id, 2)]
    events = await task_events(await make_store("scheduler"), task_id)
    lost = [e for e in events if isinstance(e, TaskPreempted)]
    assert len(lost) == 1
    assert lost[0].reason == "host_lost"
    assert lost[0].host_id == "doomed"
    assert lost[0].requeued


async def test_a_host_taken_for_lost_that_comes_back_has_its_old_run_stopped(
    lifecycle: App, start_scheduler: Any, hosts: Any
) -> None:
    """A host whose heartbeats stopped for a while (a slow host, or a feed that stalled) still runs the task the
    scheduler has placed elsewhere since: once it is heard again, that run is terminated there, so the task does
    not run twice."""
    await register_agent(lifecycle, "worker")
    slow: FakeHost = await hosts("slow", hold=True)
    async with start_scheduler(host_lost_after_s="2") as scheduler:
        view = await scheduler.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "x"}, status=201)
        task_id = view["task_id"]
        await slow.wait_running(task_id)
        other: FakeHost = await hosts("other", hold=True)
        slow.beating = False
        await other.wait_running(task_id, timeout=15)
        assert task_id in slow.running  # still running there: nobody told it
        slow.beating = True

        async def stopped() -> bool:
            return task_id not in slow.running

        await eventually(stopped, timeout=15)
        assert ("terminate", task_id) in slow.commands
        assert task_id in other.running  # the placed attempt runs on
        assert (await until_status(scheduler, task_id, "assigned"))["host_id"] == "other"


async def test_a_task_whose_host_is_lost_too_often_ends_lost(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    await register_agent(lifecycle, "worker")
    doomed: FakeHost = await hosts("doomed", hold=True)
    async with start_scheduler(max_attempts="1", host_lost_after_s="2") as scheduler:
        view = await scheduler.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "x"}, status=201)
        await doomed.wait_running(view["task_id"])
        doomed.beating = False
        done = await until_status(scheduler, view["task_id"], "completed", timeout=15)
        assert done["outcome"] == "lost"
    events = await task_events(await make_store("scheduler"), view["task_id"])
    assert isinstance(events[-1], TaskCompleted)
    assert events[-1].outcome == "lost"


async def test_only_the_lease_holder_schedules_and_the_other_takes_over(
    lifecycle: App, start_scheduler: Any, hosts: Any
) -> None:
    await register_agent(lifecycle, "worker")
    host: FakeHost = await hosts("h1")
    async with contextlib.AsyncExitStack() as first:
        one = await first.enter_async_context(start_scheduler(replica_id="one"))
        await eventually(lambda: _leading(one))
        async with start_scheduler(replica_id="two") as two:
            await asyncio.sleep(1.0)
            assert (await two.json("GET", "/v1/status"))["leader"] is False
            # Either replica accepts work; the leader runs it.
            view = await two.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "a"}, status=201)
            await until_status(one, view["task_id"], "completed")
            await first.aclose()  # the leader shuts down and hands the lease back
            await eventually(lambda: _leading(two))
            again = await two.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "b"}, status=201)
            await until_status(two, again["task_id"], "completed")
    assert len(host.started) == 2


async def _leading(app: App) -> bool:
    return bool((await app.json("GET", "/v1/status"))["leader"])


# --- kill -9 -------------------------------------------------------------------------------------------


async def test_kill_9_mid_run_leaves_every_task_in_a_defined_state(
    lifecycle: App, hosts: Any, scheduler_process: Any, nc: NatsClient, make_store: Any
) -> None:
    agents = [f"agent-{i}" for i in range(6)]
    for name in agents:
        await register_agent(lifecycle, name)
    fleet = [await hosts(f"h{i}", delay=0.3) for i in range(2)]
    client = CommandClient(nc, timeout=10.0)
    first = scheduler_process()

    async def answering() -> bool:
        try:
            return bool((await client.call("scheduler", "status", {}, dict))["leader"])
        except Exception:
            return False

    await eventually(answering, timeout=30)
    task_ids = []
    for i in range(18):
        view = await client.call("scheduler", "submit", {"agent_id": agents[i % 6], "input": f"job {i}"}, dict)
        task_ids.append(view["task_id"])

    async def some_started() -> bool:
        return sum(len(h.started) for h in fleet) >= 4

    await eventually(some_started)
    first.send_signal(signal.SIGKILL)
    first.wait()
    scheduler_process()  # a new process: rebuilds from the stream, takes the lease once it expires

    async def all_finished() -> bool:
        try:
            views = [await client.call("scheduler", "get", {"task_id": t}, dict) for t in task_ids]
        except Exception:
            return False
        return all(v["status"] == "completed" for v in views)

    await eventually(all_finished, timeout=60)
    store = await make_store("scheduler")
    for task_id in task_ids:
        events = await task_events(store, task_id)
        completed = [e for e in events if isinstance(e, TaskCompleted)]
        assert len(completed) == 1, (task_id, events)
        assert completed[0].outcome == "succeeded"
        attempts = [e.attempt for e in events if isinstance(e, TaskAssigned)]
        assert attempts == list(range(1, len(attempts) + 1))
    started = [s for h in fleet for s in h.started]
    assert len(started) == len(set(started))  # no attempt ran twice

    async def agents_ready() -> bool:
        last = [(await agent_events(store, a))[-1] for a in agents]
        return all(t == "agent.task_completed" for t in last)

    await eventually(agents_ready, timeout=20)
