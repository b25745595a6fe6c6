"""An agent's own set follows the agent events in their stream order, whoever applies them and however late.

Every policy replica follows the agent events and changes the agent's set. A change names the stream sequence of
the agent event it follows (its source); the set takes it only from an event newer than its last one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from symbi_common.decisions import Allow, Deny
from symbi_common.eventstore import EventStore
from symbi_common.policy.agent_sets import agent_policy_text, no_policy_text
from symbi_common.policy.events import PolicySetState, apply_policy_event
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_contracts.lifecycle.events import CODEC, AgentConfigured, AgentSuspended
from symbi_contracts.policy.commands import CaughtUpRequest
from symbi_policy.domain import FollowAgent, RetireSet, decide_set

from .conftest import RunningPolicy, running_agent
from .test_agent_policies import NO_NET, NO_SHELL, shell_request, tool_request

MakeStore = Callable[..., Awaitable[EventStore]]


async def wait_applied(policy: RunningPolicy, sequence: int) -> None:
    """Until this replica has applied the agent events up to ``sequence`` (and the set changes they caused)."""
    await policy.app.state.agent_policies.caught_up(CaughtUpRequest(sequence=sequence, timeout_s=30))


def fold(state: PolicySetState, command: Any) -> PolicySetState:
    for event in decide_set(state, command):
        state = apply_policy_event(state, event)
    return state


def test_a_change_from_an_older_agent_event_changes_nothing() -> None:
    shell, net = agent_policy_text("a-1", (NO_SHELL,)), agent_policy_text("a-1", (NO_NET,))
    state = fold(PolicySetState(set_id="agent-a-1"), FollowAgent(agent_id="a-1", source=10, cedar=shell))
    assert (state.status, state.revision, state.source, state.origin) == ("active", 1, 10, "agent:a-1")
    newer = fold(state, FollowAgent(agent_id="a-1", source=30, cedar=net))
    assert (newer.cedar, newer.revision, newer.source) == (net, 2, 30)
    # A replica applying the configuration of sequence 20 late: nothing, not even a revision.
    assert decide_set(newer, FollowAgent(agent_id="a-1", source=20, cedar=shell)) == []
    assert decide_set(newer, FollowAgent(agent_id="a-1", source=30, cedar=net)) == []
    # The same text from a newer event is still recorded, so a late one between them cannot win either.
    same = fold(newer, FollowAgent(agent_id="a-1", source=40, cedar=net))
    assert (same.cedar, same.revision, same.source) == (net, 3, 40)
    # agent.ready only registers: a set there already, even one written before sources were recorded (0),
    # is left as it is, so a replay never writes the first configuration over a later one.
    legacy = PolicySetState(set_id="agent-a-1", status="active", cedar=net, revision=4)
    assert decide_set(legacy, FollowAgent(agent_id="a-1", source=10, cedar=shell, register_only=True)) == []
    assert decide_set(newer, FollowAgent(agent_id="a-1", source=99, cedar=shell, register_only=True)) == []
    # An operator's change (no source) keeps the newest agent event the set followed.
    operated = fold(same, RetireSet(reason="an operator retires it"))
    assert (operated.status, operated.source) == ("retired", 40)


def test_an_agent_without_policies_keeps_a_set_a_later_configuration_updates() -> None:
    shell = agent_policy_text("a-2", (NO_SHELL,))
    assert decide_set(PolicySetState(set_id="agent-a-2"), FollowAgent(agent_id="a-2", source=5)) == []
    state = fold(PolicySetState(set_id="agent-a-2"), FollowAgent(agent_id="a-2", source=5, cedar=shell))
    none = fold(state, FollowAgent(agent_id="a-2", source=6))
    assert (none.status, none.cedar) == ("active", no_policy_text("a-2"))
    again = fold(none, FollowAgent(agent_id="a-2", source=7, cedar=shell))
    assert (again.status, again.cedar, again.revision) == ("active", shell, 3)
    retired = fold(again, FollowAgent(agent_id="a-2", source=8, retire="agent terminated: done"))
    assert (retired.status, retired.retired_reason) == ("retired", "agent terminated: done")
    assert decide_set(retired, FollowAgent(agent_id="a-2", source=9, cedar=shell)) == []  # retired for good
    # Terminated before it ever had a set: nothing to retire.
    assert decide_set(PolicySetState(set_id="agent-a-3"), FollowAgent(agent_id="a-3", source=3, retire="x")) == []


async def test_a_late_replica_does_not_bring_back_an_older_configuration(
    policy: RunningPolicy, make_store: MakeStore
) -> None:
    """Configurations C1 (no shell) and C2 (no fetch) of a suspended agent: this replica applies C2; another one,
    late, then writes C1 through the same aggregate (its own view of the set lagging). C2 stays in force."""
    store = await make_store("lifecycle")
    tip = await running_agent(store, "late-1", (NO_SHELL,))
    changes = [
        AgentSuspended(reason="tool.invoke denied"),
        AgentConfigured(config=AgentConfig(name="reader", policies=(NO_SHELL,))),
        AgentConfigured(config=AgentConfig(name="reader", policies=(NO_NET,))),
    ]
    recs = await store.append("agent", "late-1", changes, CODEC, expected=tip)
    first, second = recs[1].tip.sequence, recs[2].tip.sequence
    await wait_applied(policy, second)
    late = FollowAgent(agent_id="late-1", source=first, cedar=agent_policy_text("late-1", (NO_SHELL,)))
    _, recorded = await policy.service.sets.execute("agent-late-1", late)
    assert recorded == []
    state = (await policy.service.sets.load("agent-late-1", fresh=True)).state
    assert 'Tool::"fetch"' in state.cedar
    assert state.source == second
    assert isinstance(await policy.service.decide(shell_request("late-1")), Allow)
    assert isinstance(await policy.service.decide(tool_request("late-1", "fetch")), Deny)


async def test_policies_dropped_and_given_again_are_in_force(policy: RunningPolicy, make_store: MakeStore) -> None:
    """An agent reconfigured without policies, then with new ones: the new ones are in force (before, the set
    was retired by the first change and the second was passed over)."""
    store = await make_store("lifecycle")
    tip = await running_agent(store, "again-1", (NO_SHELL,))
    await wait_applied(policy, tip.sequence)
    assert isinstance(await policy.service.decide(shell_request("again-1")), Deny)
    dropped = [AgentSuspended(reason="r"), AgentConfigured(config=AgentConfig(name="reader"))]
    tip = (await store.append("agent", "again-1", dropped, CODEC, expected=tip))[-1].tip
    await wait_applied(policy, tip.sequence)
    assert isinstance(await policy.service.decide(shell_request("again-1")), Allow)
    given = [AgentConfigured(config=AgentConfig(name="reader", policies=(NO_NET,)))]
    tip = (await store.append("agent", "again-1", given, CODEC, expected=tip))[-1].tip
    await wait_applied(policy, tip.sequence)
    assert isinstance(await policy.service.decide(tool_request("again-1", "fetch")), Deny)
    assert policy.service.follower.states["agent-again-1"].status == "active"
