"""Quotas beyond one task, enforced by the real embedded Cedar point with the shipped baseline (real NATS, the
real lifecycle on PostgreSQL): over a concurrency quota a task waits in the queue, over a CPU-seconds quota it
is refused with ``quota_exceeded``; neither suspends the agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schedkit import (
    App,
    FakeHost,
    agent_events,
    eventually,
    register_agent,
    running_app,
    scheduler_env,
    task_events,
    until_status,
)
from symbi_common.policy.events import AGGREGATE_TYPE, POLICY_SET_CODEC, PolicySetRegistered
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.settings import load_settings
from symbi_contracts.scheduler.events import TaskCompleted, TaskSuspended
from symbi_scheduler.main import build_app

BASELINE = Path(__file__).resolve().parents[3] / "services" / "policy" / "src" / "symbi_policy" / "baseline.cedar"


async def _embedded_scheduler(nats_url: str, keys_dir: Path, **settings: str) -> Any:
    env = scheduler_env(nats_url, keys_dir, **settings)
    env.update({"SYMBI_POLICY__ENFORCEMENT": "embedded", "SYMBI_POLICY__DECISION_LOG": "false"})
    return running_app(build_app(load_settings(env=env)), "scheduler")


async def _baseline(make_store: Any) -> None:
    policy = await make_store("policy")
    event = PolicySetRegistered(set_id="baseline", cedar=BASELINE.read_text())
    await policy.append(AGGREGATE_TYPE, "baseline", [event], POLICY_SET_CODEC, expected=NEW_AGGREGATE)


async def submit(scheduler: App, agent_id: str) -> str:
    view = await scheduler.json("POST", "/v1/tasks", {"agent_id": agent_id, "input": "x"}, status=201)
    return str(view["task_id"])


async def test_over_a_tenant_concurrency_quota_a_task_waits_until_another_ends(
    lifecycle: App, hosts: Any, make_store: Any, nats_url: str, keys_dir: Path
) -> None:
    await _baseline(make_store)
    for agent_id in ("acme-a", "acme-b", "solo"):
        await register_agent(lifecycle, agent_id, tenant="other" if agent_id == "solo" else "acme")
    host: FakeHost = await hosts("h1", hold=True)
    store = await make_store("scheduler")
    quota = {"TENANT_QUOTAS__ACME__CONCURRENT_TASKS": "1"}
    async with await _embedded_scheduler(nats_url, keys_dir, **quota) as scheduler:
        first = await submit(scheduler, "acme-a")
        await host.wait_running(first)
        second = await submit(scheduler, "acme-b")
        other_tenant = await submit(scheduler, "solo")
        await host.wait_running(other_tenant)  # another tenant's task is not held back

        async def waiting() -> dict[str, Any] | None:
            view = await scheduler.json("GET", f"/v1/tasks/{second}")
            return view if view["wait_reason"] else None

        view = await eventually(waiting)
        assert view["status"] == "queued"
        assert view["wait_reason"] == "waiting for quota: tenant 'acme' runs 1 of its 1 concurrent tasks"
        assert (second, 1) not in host.started

        await host.finish(first)
        await host.wait_running(second)
        await host.finish(second)
        await host.finish(other_tenant)
        done = await until_status(scheduler, second, "completed")
        assert done["outcome"] == "succeeded"
    events = await task_events(store, second)
    assert not [e for e in events if isinstance(e, TaskSuspended)]  # waiting is not a policy violation
    assert "agent.suspended" not in await agent_events(store, "acme-b")


async def test_over_a_cpu_seconds_quota_a_task_is_refused_with_the_quota_and_its_use(
    lifecycle: App, hosts: Any, make_store: Any, nats_url: str, keys_dir: Path
) -> None:
    await _baseline(make_store)
    await register_agent(lifecycle, "cruncher", quota={"cpu_seconds_per_day": 5})
    await register_agent(lifecycle, "tenant-mate", tenant="lab")
    await hosts("h1", cpu_seconds=6.25)
    store = await make_store("scheduler")
    quota = {"TENANT_QUOTAS__LAB__CPU_SECONDS_PER_DAY": "6"}
    async with await _embedded_scheduler(nats_url, keys_dir, **quota) as scheduler:
        first = await submit(scheduler, "cruncher")
        assert (await until_status(scheduler, first, "completed"))["outcome"] == "succeeded"
        second = await submit(scheduler, "cruncher")
        refused = await until_status(scheduler, second, "completed")
        assert refused["outcome"] == "refused"
        assert refused["detail"] == "quota exceeded: agent used 6.2 of its 5 CPU-seconds today (UTC)"
        assert refused["decision"]["effect"] == "deny"
        assert refused["decision"]["policies"] == ["quota-agent-cpu-seconds"]

        mate = await submit(scheduler, "tenant-mate")
        assert (await until_status(scheduler, mate, "completed"))["outcome"] == "succeeded"
        mate_again = await submit(scheduler, "tenant-mate")
        over = await until_status(scheduler, mate_again, "completed")
        assert over["outcome"] == "refused"
        assert over["detail"] == "quota exceeded: tenant 'lab' used 6.2 of its 6 CPU-seconds today (UTC)"

        async def agent_ready() -> bool:
            return (await agent_events(store, "cruncher"))[-1] == "agent.task_completed"

        await eventually(agent_ready)
    [completed] = [e for e in await task_events(store, second) if isinstance(e, TaskCompleted)]
    assert completed.code == "quota_exceeded"
    assert completed.decision is not None
    assert "agent.suspended" not in await agent_events(store, "cruncher")
