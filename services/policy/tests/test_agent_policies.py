"""An agent's own policies (its definition's ``policy`` blocks, compiled to Cedar) live and die with it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from symbi_common.decisions import Allow, DecisionRequest, Deny, EntityRef
from symbi_common.errors import AppendFailed, Timeout
from symbi_common.eventstore import EventStore
from symbi_common.policy.agent_sets import agent_policy_text
from symbi_common.policy.cedar import PolicyRejected
from symbi_common.settings import Settings
from symbi_contracts.lifecycle.config import AgentConfig, PolicySpec
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

from .conftest import RunningPolicy, running_agent

MakeStore = Callable[..., Awaitable[EventStore]]

NO_SHELL = PolicySpec(
    name="no-shell",
    cedar='@reason("this agent never uses the shell")\nforbid(principal, action == Action::"tool.invoke", resource == Tool::"shell");',
    source="deny tool shell",
)


def shell_request(agent_id: str) -> DecisionRequest:
    return DecisionRequest(
        principal=EntityRef(type="Agent", id=agent_id),
        action="tool.invoke",
        resource=EntityRef(type="Tool", id="shell"),
    )


async def wait_set(policy: RunningPolicy, set_id: str, status: str) -> None:
    for _ in range(250):
        state = policy.service.follower.states.get(set_id)
        if state is not None and state.status == status:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"policy set {set_id} did not become {status}: {policy.runtime.recent_errors}")


async def test_an_agents_policies_are_active_while_it_lives(policy: RunningPolicy, make_store: MakeStore) -> None:
    store = await make_store("lifecycle")
    tip = await running_agent(store, "careful-1", (NO_SHELL,))
    await wait_set(policy, "agent-careful-1", "active")
    view = (await policy.http.get("/v1/policy-sets/agent-careful-1")).json()
    assert view["origin"] == "agent:careful-1"
    assert view["policies"] == ["no-shell"]
    assert 'principal == Agent::"careful-1"' in view["cedar"]

    denied = await policy.service.decide(shell_request("careful-1"))
    assert isinstance(denied, Deny)
    assert denied.reason == "this agent never uses the shell"
    assert isinstance(await policy.service.decide(shell_request("other")), Allow)  # scoped to its own agent

    done = [AgentTaskCompleted(task_id="t1"), AgentTerminated(reason="done", previous=AgentStatus.READY)]
    await store.append("agent", "careful-1", done, CODEC, expected=tip)
    await wait_set(policy, "agent-careful-1", "retired")
    assert isinstance(await policy.service.decide(shell_request("careful-1")), Allow)


async def test_policies_of_an_agent_are_activated_once_even_after_a_restart(
    settings: Settings, make_store: MakeStore
) -> None:
    store = await make_store("lifecycle")
    await running_agent(store, "steady-1", (NO_SHELL,))
    for _ in range(2):  # a restarted policy service replays the agent events: nothing changes
        app = build_app(settings)
        async with app.router.lifespan_context(app):
            service = app.state.policy
            for _ in range(250):
                if "agent-steady-1" in service.follower.states:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            assert service.follower.states["agent-steady-1"].revision == 1
            assert service.follower.tips["agent-steady-1"].version == 1


def test_agent_policies_are_scoped_and_may_not_speak_for_others() -> None:
    text = agent_policy_text("a1", (NO_SHELL,))
    assert 'principal == Agent::"a1"' in text
    assert '@id("no-shell")' in text
    other = PolicySpec(name="grab", cedar='permit(principal == Agent::"a2", action, resource);')
    with pytest.raises(PolicyRejected, match="may only apply"):
        agent_policy_text("a1", (other,))


NO_NET = PolicySpec(
    name="no-net",
    cedar='@reason("this agent never fetches")\nforbid(principal, action == Action::"tool.invoke", resource == Tool::"fetch");',
    source="deny tool fetch",
)


def tool_request(agent_id: str, tool: str) -> DecisionRequest:
    return DecisionRequest(
        principal=EntityRef(type="Agent", id=agent_id), action="tool.invoke", resource=EntityRef(type="Tool", id=tool)
    )


async def test_a_suspended_agent_reconfigured_gets_its_new_policies_and_a_replay_keeps_them(
    settings: Settings, make_store: MakeStore
) -> None:
    store = await make_store("lifecycle")
    tip = await running_agent(store, "changed-1", (NO_SHELL,))
    changes = [
        AgentSuspended(reason="tool.invoke denied"),
        AgentConfigured(config=AgentConfig(name="reader", policies=(NO_NET,))),
    ]
    configured = (await store.append("agent", "changed-1", changes, CODEC, expected=tip))[-1].tip.sequence
    for restart in range(3):  # the first start applies the configuration; replays after restarts change nothing
        app = build_app(settings)
        async with app.router.lifespan_context(app):
            service = app.state.policy
            # What the lifecycle asks after a configuration: answered once it is applied, a typed timeout if not.
            agents = app.state.agent_policies
            assert (await agents.caught_up(CaughtUpRequest(sequence=configured))).position >= configured
            with pytest.raises(Timeout):
                await agents.caught_up(CaughtUpRequest(sequence=configured + 1_000, timeout_s=0.1))
            for _ in range(250):
                state = service.follower.states.get("agent-changed-1")
                if state is not None and state.revision == 2:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            state = service.follower.states["agent-changed-1"]
            assert (state.revision, state.status) == (2, "active"), f"after restart {restart}"
            assert 'Tool::"fetch"' in state.cedar
            assert 'Tool::"shell"' not in state.cedar
            assert isinstance(await service.decide(tool_request("changed-1", "shell")), Allow)
            denied = await service.decide(tool_request("changed-1", "fetch"))
            assert isinstance(denied, Deny)
            assert denied.reason == "this agent never fetches"


@pytest.mark.parametrize(
    "cedar",
    [
        'permit(principal, action == Action::"secret.read", resource);',
        'permit(principal, action in [Action::"tool.invoke", Action::"secret.read"], resource);',
        'permit(principal, action in Action::"secret.read", resource);',
        'permit(principal, action in [Action::"secret.read"], resource);',
        "permit(principal, action, resource);",
    ],
)
def test_an_agent_may_not_grant_itself_a_secret(cedar: str) -> None:
    with pytest.raises(PolicyRejected, match="cannot grant secrets"):
        agent_policy_text("a1", (PolicySpec(name="grab-secrets", cedar=cedar),))
    # Forbidding itself a secret is fine, and so is permitting a named action.
    forbid = PolicySpec(name="no-secrets", cedar='forbid(principal, action == Action::"secret.read", resource);')
    tools = PolicySpec(name="tools", cedar='permit(principal, action == Action::"tool.invoke", resource);')
    assert "secret.read" in agent_policy_text("a1", (forbid, tools))


#: Parses, but the schema has no such action: the policy service refuses the agent's whole set for it.
TYPO = PolicySpec(name="typo", cedar='permit(principal, action == Action::"tool.invok", resource);')


async def test_an_agent_whose_policies_are_refused_is_forbidden_everything(
    policy: RunningPolicy, make_store: MakeStore
) -> None:
    """Its set forbids it every action instead (fail closed); before, the refusal was logged and the agent ran
    under the baseline without the ``forbid`` it was registered with."""
    store = await make_store("lifecycle")
    await running_agent(store, "careless-1", (NO_SHELL, TYPO))
    await wait_set(policy, "agent-careless-1", "active")
    view = (await policy.http.get("/v1/policy-sets/agent-careless-1")).json()
    assert view["policies"] == ["agent-policies-refused"]
    assert "tool.invok" in view["cedar"]  # (the reason, in a comment)
    assert isinstance(await policy.service.decide(shell_request("careless-1")), Deny)
    assert isinstance(await policy.service.decide(tool_request("careless-1", "fetch")), Deny)
    assert isinstance(await policy.service.decide(tool_request("other", "fetch")), Allow)


async def test_a_policy_change_the_store_fails_to_take_is_applied_again(
    policy: RunningPolicy, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy set stream failing while an agent's policies are registered is no skip: the follower applies
    the event again until they are (before, the error was logged and the agent ran without them)."""
    execute = policy.service.sets.execute
    failures: list[str] = []

    async def flaky(set_id: str, command: Any, **kw: Any) -> Any:
        if set_id == "agent-careful-9" and len(failures) < 2:
            failures.append(set_id)
            raise AppendFailed("JetStream did not confirm the append")
        return await execute(set_id, command, **kw)

    monkeypatch.setattr(policy.service.sets, "execute", flaky)
    store = await make_store("lifecycle")
    await running_agent(store, "careful-9", (NO_SHELL,))
    await wait_set(policy, "agent-careful-9", "active")
    assert failures == ["agent-careful-9"] * 2
    assert isinstance(await policy.service.decide(shell_request("careful-9")), Deny)
