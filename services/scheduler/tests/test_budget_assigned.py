"""The scheduler copies the agent's tenant and model budget into ``task.assigned``: the model gateway reads them
there (docs/models.md)."""

from __future__ import annotations

from typing import Any

from schedkit import App, FakeHost, register_agent, task_events, until_status
from symbi_contracts.lifecycle.config import AgentBudget
from symbi_contracts.scheduler.events import TaskAssigned


async def test_task_assigned_carries_the_tenant_and_the_budget(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    await register_agent(lifecycle, "spender", tenant="acme", budget={"tokens_per_day": 1000, "micro_usd_per_day": 50})
    host: FakeHost = await hosts("h1")
    async with start_scheduler() as scheduler:
        view = await scheduler.json("POST", "/v1/tasks", {"agent_id": "spender", "input": "x"}, status=201)
        await until_status(scheduler, view["task_id"], "completed")
    assert host.started
    [assigned] = [
        e for e in await task_events(await make_store("scheduler"), view["task_id"]) if isinstance(e, TaskAssigned)
    ]
    assert assigned.tenant == "acme"
    assert assigned.budget == AgentBudget(tokens_per_day=1000, micro_usd_per_day=50)
