"""The same commands over NATS request/reply (``cmd.lifecycle.*``), with typed errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from symbi_common.errors import AlreadyExists, BadRequest, IllegalTransition, NotFound, ValidationError
from symbi_contracts.lifecycle.events import AgentStatus
from symbi_lifecycle.projections import AgentPage, AgentView

from .conftest import Running
from .test_api import GOOD


async def call(running: Running, action: str, request: dict[str, Any], result: Any = AgentView, **kw: Any) -> Any:
    return await running.client.call("lifecycle", action, request, result, **kw)


async def test_lifecycle_over_nats(running: Running) -> None:
    agent = await call(
        running, "register", {"agent_id": "n1", "config": GOOD}, headers={"Symbi-Correlation-Id": "flow-1"}
    )
    assert agent.state is AgentStatus.READY
    agent = await call(running, "assign_task", {"agent_id": "n1", "task_id": "job-1"})
    assert agent.state is AgentStatus.RUNNING
    assert agent.current_task == "job-1"
    agent = await call(running, "suspend", {"agent_id": "n1", "reason": "rate limit exceeded"})
    agent = await call(running, "resume", {"agent_id": "n1"})
    agent = await call(running, "complete_task", {"agent_id": "n1"})
    assert agent.state is AgentStatus.READY
    assert agent.tasks_completed == 1
    agent = await call(running, "terminate", {"agent_id": "n1", "reason": "shutdown"})
    assert agent.state is AgentStatus.TERMINATED

    got = await call(running, "get", {"agent_id": "n1", "min_sequence": agent.sequence})
    assert got.state is AgentStatus.TERMINATED
    assert got.aggregate_version == agent.aggregate_version == 7
    page = await call(running, "list", {"state": "Terminated", "min_sequence": agent.sequence}, AgentPage)
    assert [a.id for a in page.items] == ["n1"]
    history = await call(running, "history", {"agent_id": "n1"}, dict[str, Any])
    types = [e["type"] for e in history["items"]]
    assert types[:2] == ["agent.registered", "agent.ready"]
    assert types[-1] == "agent.terminated"
    assert history["items"][0]["correlation_id"] == "flow-1"


async def test_typed_errors_over_nats(running: Running) -> None:
    await call(running, "register", {"agent_id": "n2", "config": GOOD})
    with pytest.raises(IllegalTransition) as info:
        await call(running, "resume", {"agent_id": "n2"})
    assert info.value.state == "Ready"
    assert info.value.command == "resume"
    with pytest.raises(AlreadyExists):
        await call(running, "register", {"agent_id": "n2", "config": GOOD})
    with pytest.raises(NotFound):
        await call(running, "suspend", {"agent_id": "ghost"})
    with pytest.raises(BadRequest) as bad:
        await call(running, "register", {"agent_id": "n3", "config": {**GOOD, "resources": {"gpu": 1}}})
    assert bad.value.details["field"] == "config.resources.gpu"
    with pytest.raises(BadRequest):
        await call(running, "assign_task", {"agent_id": "n2"})  # task_id missing
    with pytest.raises(ValidationError) as invalid:
        await call(running, "list", {"limit": 10_000}, AgentPage)
    assert invalid.value.field == "limit"

    failed = await call(running, "register", {"agent_id": "n4", "config": {**GOOD, "version": "latest"}})
    assert failed.state is AgentStatus.FAILED
    assert [e.field for e in failed.errors] == ["version"]


async def test_concurrent_commands_on_one_agent_serialise(running: Running) -> None:
    await call(running, "register", {"agent_id": "race", "config": GOOD})
    results = await asyncio.gather(
        *(call(running, "assign_task", {"agent_id": "race", "task_id": f"t{i}"}) for i in range(8)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, AgentView)]
    lost = [r for r in results if isinstance(r, IllegalTransition)]
    assert len(won) == 1
    assert len(lost) == 7
    assert won[0].aggregate_version == 3
