"""Agent events the policy follower never acts on are passed over by their type header, unverified.

Skipping by the (unsigned) header is sound because a skipped event is never acted on: bytes that would not
verify, labelled with an ignored type, are passed over without a report, while the same bytes labelled with a
type the follower acts on, an unknown type or no type at all are verified and refused as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from symbi_common.events import tag_of
from symbi_common.eventstore import H_EVENT_TYPE, EventStore
from symbi_common.follower import Delivery
from symbi_common.positions import Unit
from symbi_common.streams import EVENTS_STREAM
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_contracts.lifecycle.events import (
    CODEC,
    AgentConfigured,
    AgentReady,
    AgentRegistered,
    AgentStatus,
    AgentTaskCompleted,
    AgentTerminated,
)
from symbi_contracts.policy.commands import CaughtUpRequest
from symbi_policy.agent_events import IGNORED_TYPES, AgentPolicyFollower

from .conftest import RunningPolicy, running_agent
from .test_agent_policies import NO_NET, NO_SHELL, wait_set

MakeStore = Callable[..., Awaitable[EventStore]]
#: The types the follower acts on: none of them may ever be skipped.
ACTED_ON = {tag_of(t) for t in (AgentRegistered, AgentReady, AgentConfigured, AgentTerminated)}


def test_only_types_without_effect_are_ignored() -> None:
    assert CODEC.tags - ACTED_ON >= IGNORED_TYPES
    assert {"agent.task_assigned", "agent.task_completed"} <= IGNORED_TYPES


async def test_ignored_types_are_skipped_unverified_and_their_positions_passed(
    policy: RunningPolicy, make_store: MakeStore, js: JetStreamContext
) -> None:
    agents: AgentPolicyFollower = policy.app.state.agent_policies
    store = await make_store("lifecycle")
    tip = await running_agent(store, "busy-1", (NO_SHELL,))  # registered, ready, task_assigned
    await wait_set(policy, "agent-busy-1", "active")

    junk = b"\x93not an event"
    sequences: dict[str, int] = {}
    for label in ("agent.task_completed", "agent.terminated", "agent.renamed", ""):
        headers = {H_EVENT_TYPE: label} if label else None
        sequences[label] = (await js.publish("evt.agent.junk-1", junk, headers=headers)).seq
    last = sequences[""]
    assert (await agents.caught_up(CaughtUpRequest(sequence=last, timeout_s=5))).position == last
    reported = "\n".join(policy.runtime.recent_errors)
    assert f"({sequences['agent.task_completed']})" not in reported
    for label in ("agent.terminated", "agent.renamed", ""):
        assert f"evt.agent.junk-1 ({sequences[label]})" in reported, label
    assert agents.skipped == 2  # the genuine agent.task_assigned and the junk labelled agent.task_completed

    # Genuine events after them are applied: a configuration, then retirement.
    more = [AgentConfigured(config=AgentConfig(name="reader", policies=(NO_NET,))), AgentTaskCompleted(task_id="t1")]
    recs = await store.append("agent", "busy-1", more, CODEC, expected=tip)
    assert (await agents.caught_up(CaughtUpRequest(sequence=recs[-1].sequence))).position == recs[-1].sequence
    for _ in range(250):
        state = policy.service.follower.states.get("agent-busy-1")
        if state is not None and state.revision == 2:
            break
        await asyncio.sleep(0.02)
    assert 'Tool::"fetch"' in policy.service.follower.states["agent-busy-1"].cedar
    assert agents.skipped == 3
    await store.append(
        "agent", "busy-1", [AgentTerminated(reason="done", previous=AgentStatus.READY)], CODEC, expected=recs[-1].tip
    )
    await wait_set(policy, "agent-busy-1", "retired")


async def test_a_deferred_configuration_is_applied_at_an_ignored_last_event(
    policy: RunningPolicy, make_store: MakeStore, js: JetStreamContext
) -> None:
    store = await make_store("lifecycle")
    tip = await running_agent(store, "busy-2", (NO_SHELL,))
    more = [AgentConfigured(config=AgentConfig(name="reader", policies=(NO_NET,))), AgentTaskCompleted(task_id="t1")]
    recs = await store.append("agent", "busy-2", more, CODEC, expected=tip)
    # One batch as a follower receives it: the configuration waits for the end (an event is still pending), and
    # the last event, ignored, ends it. Only then does the position move (past the ignored event).
    batch = []
    for rec, pending in zip(recs, (1, 0), strict=True):
        stored = await js.get_msg(EVENTS_STREAM, rec.sequence)
        assert stored.data is not None
        assert stored.subject is not None
        batch.append(Delivery(stored.subject, rec.sequence, stored.data, dict(stored.headers or {}), None, pending))
    follower = AgentPolicyFollower(policy.runtime.js, policy.runtime.store, policy.service)
    await follower._apply_batch(Unit(0), batch)
    assert follower.skipped == 1
    assert follower.position == recs[-1].sequence
