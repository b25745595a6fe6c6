"""Erasing an agent also crypto-shreds its own policy set ``policy.agent-<id>`` (its text may name personal data).

Before, the erasure destroyed the agent's key and those of its tasks and executions, but the agent's own policy
set (the ``policy`` blocks of its definition, written by the policy service) stayed readable by every service.
The set's key is destroyed in the same resumable, idempotent erasure: one per aggregate, a repeated request
continues it and answers the same result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client as NatsClient
from symbi_audit.erasure import CODEC, EraseRequest, ErasureExecuted, ErasureRequested, erase, erasure_id_of
from symbi_common.errors import DataKeyDestroyed
from symbi_common.eventstore import EventStore
from symbi_common.policy.agent_sets import agent_policy_text
from symbi_common.policy.events import (
    AGGREGATE_TYPE,
    POLICY_SET_CODEC,
    PolicySetRegistered,
    PolicySetUpdated,
)
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.streams import EVENTS_STREAM, read_subject
from symbi_contracts.lifecycle.config import AgentConfig, PolicySpec
from symbi_contracts.lifecycle.events import CODEC as AGENT_CODEC
from symbi_contracts.lifecycle.events import AgentRegistered

MakeStore = Callable[..., Awaitable[EventStore]]
#: A policy of an agent's own that names personal data.
PERSONAL = PolicySpec(
    name="no-mail-to-jane",
    cedar='forbid(principal, action == Action::"message.send", resource == Agent::"jane.doe-mailbox");',
    source="deny message jane.doe-mailbox",
)


async def agent_with_own_set(make_store: MakeStore, agent_id: str) -> None:
    """An agent (its registration, as the lifecycle writes it) and its own policy set (as the policy service does)."""
    lifecycle = await make_store("lifecycle")
    config = AgentConfig(name="reader", policies=(PERSONAL,))
    registered = [AgentRegistered(agent_id=agent_id, config=config)]
    await lifecycle.append("agent", agent_id, registered, AGENT_CODEC, expected=NEW_AGGREGATE)
    policy = await make_store("policy")
    text = agent_policy_text(agent_id, (PERSONAL,))
    events = [
        PolicySetRegistered(set_id=f"agent-{agent_id}", cedar=text, origin=f"agent:{agent_id}", source=1),
        PolicySetUpdated(cedar=text + "\n// again", revision=2, source=2),
    ]
    await policy.append(AGGREGATE_TYPE, f"agent-{agent_id}", events, POLICY_SET_CODEC, expected=NEW_AGGREGATE)


async def set_payloads(nc: NatsClient, reader: EventStore, set_id: str) -> list[object]:
    """Each stored event of policy set ``set_id`` as ``reader`` decodes it, or the error it raises."""
    out: list[object] = []
    async for batch in read_subject(nc, EVENTS_STREAM, f"evt.policy.{set_id}"):
        for raw in batch:
            try:
                out.append((await reader.open_one(raw.data, raw.subject, raw.sequence, POLICY_SET_CODEC)).event)
            except DataKeyDestroyed as exc:
                out.append(exc)
    return out


async def test_an_agents_erasure_shreds_its_own_policy_set(provisioned: NatsClient, make_store: MakeStore) -> None:
    await agent_with_own_set(make_store, "shred-2")
    policy = await make_store("policy")
    other = [PolicySetRegistered(set_id="ops-keep", cedar='@id("x")\npermit(principal is Service, action, resource);')]
    await policy.append(AGGREGATE_TYPE, "ops-keep", other, POLICY_SET_CODEC, expected=NEW_AGGREGATE)
    before = await set_payloads(provisioned, await make_store("scheduler"), "agent-shred-2")
    assert all(isinstance(e, PolicySetRegistered | PolicySetUpdated) for e in before), before
    assert "jane.doe-mailbox" in before[0].cedar  # type: ignore[attr-defined]

    audit = await make_store("audit")
    result = await erase(audit, audit.datakeys, EraseRequest(aggregate="agent.shred-2"), principal="dpo")

    # No reader can decrypt the set's payloads any more (each reader a process of its own: nothing cached).
    for service in ("scheduler", "policy", "audit"):
        reader = await make_store(service)
        after = await set_payloads(provisioned, reader, "agent-shred-2")
        assert len(after) == 2
        assert all(isinstance(e, DataKeyDestroyed) for e in after), (service, after)
        assert not await reader.datakeys.exists("policy.agent-shred-2")
        with pytest.raises(DataKeyDestroyed):
            await reader.load(AGGREGATE_TYPE, "agent-shred-2", POLICY_SET_CODEC)
    # Another policy set is untouched.
    kept = await set_payloads(provisioned, await make_store("scheduler"), "ops-keep")
    assert [type(e) for e in kept] == [PolicySetRegistered]
    recorded = await audit.load("audit", result.erasure_id, CODEC)
    executed = recorded[-1].event
    assert isinstance(executed, ErasureExecuted)
    assert "policy.agent-shred-2/*" in executed.data_keys


async def test_an_agents_erasure_resumed_and_repeated_shreds_its_policy_set_once(make_store: MakeStore) -> None:
    """The process died after recording the request (and after destroying the agent's own key): the request made
    again continues the erasure and shreds the set too; made once more it changes nothing and answers the same."""
    await agent_with_own_set(make_store, "shred-3")
    audit = await make_store("audit")
    erasure_id = erasure_id_of("agent.shred-3")
    requested = ErasureRequested(aggregate="agent.shred-3", requested_by="dpo", reason="art. 17")
    first = await audit.append(
        "audit", erasure_id, [requested], CODEC, expected=NEW_AGGREGATE, correlation_id=erasure_id
    )
    await audit.datakeys.destroy("agent.shred-3")  # (the first key of the erasure, before the crash)
    assert await audit.datakeys.exists("policy.agent-shred-3")

    request = EraseRequest(aggregate="agent.shred-3", reason="art. 17")
    resumed = await erase(audit, audit.datakeys, request, principal="dpo")
    assert resumed.requested_sequence == first[0].sequence
    again = await erase(audit, audit.datakeys, request, principal="dpo")
    elsewhere = await make_store("audit")  # another audit replica
    third = await erase(elsewhere, elsewhere.datakeys, request, principal="dpo")
    assert again == resumed == third

    recorded = await audit.load("audit", erasure_id, CODEC)
    assert [type(r.event) for r in recorded] == [ErasureRequested, ErasureExecuted]
    executed = recorded[-1].event
    assert isinstance(executed, ErasureExecuted)
    assert executed.data_keys == (
        "agent.shred-3/*",
        "task.by-agent.shred-3/*",
        "execution.by-agent.shred-3/*",
        "policy.agent-shred-3/*",
    )
    reader = await make_store("scheduler")
    assert not await reader.datakeys.exists("policy.agent-shred-3")
    with pytest.raises(DataKeyDestroyed):
        await reader.load(AGGREGATE_TYPE, "agent-shred-3", POLICY_SET_CODEC)
