"""An agent erased before a policy replica read its events: its set never keeps what it had (fail closed).

Erasing an agent destroys its data key (``audit erase agent.<id>``), so a replica that reads the agent's events
afterwards (one that was stopped, or behind) cannot decrypt them. Before, such an event was logged and passed
over, and the set stayed as the last replica that could read the events left it: active, with the agent's own
permits, also after its termination. Now the agent's termination (by its signed type) retires the set, and any
other of its events makes the set forbid the agent every action. Since the erasure also shreds the agent's own
set (``policy.agent-<id>``), a replica reads that set as forbidding the agent every action, writing nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from symbi_audit.erasure import EraseRequest, erase
from symbi_common.decisions import Allow, Deny
from symbi_common.errors import DataKeyDestroyed
from symbi_common.eventstore import EventStore
from symbi_common.settings import Settings
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_contracts.lifecycle.events import (
    CODEC,
    AgentConfigured,
    AgentStatus,
    AgentSuspended,
    AgentTaskCompleted,
    AgentTerminated,
)
from symbi_contracts.policy.commands import CaughtUpRequest
from symbi_policy.main import build_app

from .conftest import running_agent
from .test_agent_policies import NO_NET, NO_SHELL, shell_request, tool_request

MakeStore = Callable[..., Awaitable[EventStore]]


@asynccontextmanager
async def replica(settings: Settings, caught_up_to: int) -> AsyncIterator[FastAPI]:
    """A policy replica started now, once it has applied the agent events up to ``caught_up_to``."""
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.agent_policies.caught_up(CaughtUpRequest(sequence=caught_up_to, timeout_s=30))
        yield app


async def erase_agent(make_store: MakeStore, agent_id: str) -> None:
    """The audit service's erasure of ``agent.<agent_id>`` (its data keys destroyed), through its own store."""
    audit = await make_store("audit")
    await erase(audit, audit.datakeys, EraseRequest(aggregate=f"agent.{agent_id}"), principal="dpo")
    lifecycle = await make_store("lifecycle")
    try:
        await lifecycle.load("agent", agent_id, CODEC)
    except DataKeyDestroyed:
        return
    raise AssertionError(f"agent {agent_id}'s events can still be read")


async def test_a_replica_reading_an_erased_agents_termination_forbids_it_everything(
    settings: Settings, make_store: MakeStore
) -> None:
    store = await make_store("lifecycle")
    tip = await running_agent(store, "gone-1", (NO_SHELL,))
    async with replica(settings, tip.sequence) as app:
        assert app.state.policy.follower.states["agent-gone-1"].active
    # No policy replica runs (or every one is behind) while the agent is terminated and then erased.
    done = [AgentTaskCompleted(task_id="t1"), AgentTerminated(reason="done", previous=AgentStatus.READY)]
    last = (await store.append("agent", "gone-1", done, CODEC, expected=tip))[-1].sequence
    await erase_agent(make_store, "gone-1")

    # The erasure shredded the agent's set with it: a replica started after it reads the set as forbidding the
    # agent everything (nothing can be written to it any more, not even its retirement); a replay changes nothing.
    for start in range(2):
        async with replica(settings, last) as app:
            follower = app.state.policy.follower
            state = follower.states["agent-gone-1"]
            assert (state.status, state.revision, state.source) == ("active", 1, 0), f"start {start}"
            assert follower.compiled["agent-gone-1"][0].name == "agent-erased"
            assert isinstance(await app.state.policy.decide(tool_request("gone-1", "fetch")), Deny)
            assert follower.healthy, follower.halted
            assert isinstance(await app.state.policy.decide(tool_request("other", "fetch")), Allow)


async def test_a_replica_reading_an_erased_agents_events_forbids_it_everything(
    settings: Settings, make_store: MakeStore
) -> None:
    """Erased while not terminated: what its policies were can no longer be read, so its set forbids it every
    action (before, the set kept its configuration's policies: the agent was denied only the shell)."""
    store = await make_store("lifecycle")
    tip = await running_agent(store, "gone-2", (NO_SHELL,))
    async with replica(settings, tip.sequence) as app:
        assert isinstance(await app.state.policy.decide(shell_request("gone-2")), Deny)
        assert isinstance(await app.state.policy.decide(tool_request("gone-2", "fetch")), Allow)
    # Reconfigured while no replica runs, then erased: the configuration is read by nobody.
    again = [AgentSuspended(reason="r"), AgentConfigured(config=AgentConfig(name="reader", policies=(NO_NET,)))]
    last = (await store.append("agent", "gone-2", again, CODEC, expected=tip))[-1].sequence
    await erase_agent(make_store, "gone-2")

    for start in range(2):
        async with replica(settings, last) as app:
            service = app.state.policy
            state = service.follower.states["agent-gone-2"]
            assert (state.status, state.revision) == ("active", 1), f"start {start}"
            assert service.follower.compiled["agent-gone-2"][0].name == "agent-erased"
            for request in (shell_request("gone-2"), tool_request("gone-2", "fetch"), tool_request("gone-2", "x")):
                denied = await service.decide(request)
                assert isinstance(denied, Deny), denied
                assert denied.reason == "the agent was erased"
            assert isinstance(await service.decide(tool_request("other", "shell")), Allow)
            assert service.follower.healthy, service.follower.halted
