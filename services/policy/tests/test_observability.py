"""The policy service's part of a trace and its metrics on ``/metrics``: agent policies activated in the
agent's trace, every process's follower applying the change in it, decisions counted by outcome."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import trace
from symbi_common.eventstore import EventStore
from symbi_common.telemetry import capture_spans, trace_id_of
from symbi_contracts.policy.commands import CaughtUpRequest

from .conftest import RunningPolicy, running_agent
from .test_agent_policies import NO_SHELL, shell_request, wait_set

MakeStore = Callable[..., Awaitable[EventStore]]


async def test_agent_policies_join_the_agents_trace_and_decisions_are_counted(
    policy: RunningPolicy, make_store: MakeStore, scrape_metrics: Any
) -> None:
    before = await scrape_metrics(policy.http)
    assert before.value("symbi_policy_sets", status="active") == 1  # the baseline
    store = await make_store("lifecycle")
    with capture_spans() as spans:
        with trace.get_tracer("test").start_as_current_span("register careful-2") as registration:
            tip = await running_agent(store, "careful-2", (NO_SHELL,))
        # Both ends, not a guess at how long they take: the agent-events consumer has handled the agent's three
        # events (its spans ended, its counter counted them) and the follower has the new set (its span ends in
        # the same step as the state changes, with no await between).
        await policy.app.state.agent_policies.caught_up(CaughtUpRequest(sequence=tip.sequence, timeout_s=30))
        await wait_set(policy, "agent-careful-2", "active")
    mine = {s.context.span_id: s for s in spans if trace_id_of(s) == trace_id_of(registration)}
    (activation,) = [s for s in mine.values() if s.name == "policy.agent_policies"]
    assert activation.parent is not None
    handled = mine[activation.parent.span_id]
    assert handled.name == "policy.agent_event"
    assert handled.parent is not None
    assert handled.parent.span_id == registration.get_span_context().span_id
    assert handled.attributes is not None
    assert handled.attributes["symbi.subject"] == "evt.agent.careful-2"
    follows = [s for s in mine.values() if s.name == "policy.follow"]
    assert follows, "the policy follower did not apply the new set in the agent's trace"
    assert all(s.parent is not None and s.parent.span_id == activation.context.span_id for s in follows)

    body = {
        "principal": {"type": "Agent", "id": "careful-2"},
        "action": "tool.invoke",
        "resource": {"type": "Tool", "id": "shell"},
    }
    assert (await policy.http.post("/v1/decisions", json=body)).json()["effect"] == "deny"
    await policy.service.decide(shell_request("someone-else"))
    after = await scrape_metrics(policy.http)

    assert after.value("symbi_policy_sets", status="active") == 2
    assert after.value("symbi_policy_version") == policy.service.follower.version
    assert after.since(before, "symbi_policy_agent_sets_total", change="activated") == 1
    assert after.since(before, "symbi_events_consumed_total", consumer="policy_agent_events") == 3
    assert after.since(before, "symbi_events_consumed_total", consumer="policy_follower") >= 1
    assert after.since(before, "symbi_event_lag_seconds_count", consumer="policy_agent_events") == 3
    assert (
        after.since(before, "symbi_policy_decisions_total", point="service", action="tool.invoke", outcome="deny") == 1
    )
    assert (
        after.since(before, "symbi_policy_decisions_total", point="service", action="tool.invoke", outcome="allow") == 1
    )
    assert after.since(before, "symbi_policy_decision_seconds_count", point="service", action="tool.invoke") == 2
    assert after.since(before, "symbi_security_events_total", kind="policy_denial") == 1
