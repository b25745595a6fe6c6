"""An agent's erasure shreds its own policy set (``policy.agent-<id>``) too, and the runtime stays up.

Erasing an agent (``audit erase agent.<id>``) destroys the data key of its own policy set as well: the set's text
comes from the agent's definition and may name personal data. Before, a set whose data key was destroyed halted
(its events could not be decrypted): every process replaying the policy events at start denied every decision
(``policy_halted``) and stayed unready, and the policy service's agent follower retried a deferred configuration of
such a set forever. Now an agent's shredded set forbids that agent every action in every process (its tip moves
past each unreadable event), nothing is written to it any more, and an operator's shredded set still halts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from symbi_audit.erasure import EraseRequest, erase
from symbi_common.decisions import Allow, DecisionRequest, Deny, EntityRef
from symbi_common.eventstore import EventStore
from symbi_common.policy import EmbeddedDecisionPoint
from symbi_common.policy.events import AGGREGATE_TYPE, POLICY_SET_CODEC, PolicySetRegistered
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.settings import Settings
from symbi_common.streams import EVENTS_STREAM
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_contracts.lifecycle.events import CODEC, AgentConfigured, AgentSuspended
from symbi_contracts.policy.commands import CaughtUpRequest
from symbi_policy.main import build_app

from .conftest import StartRuntime, running_agent
from .test_agent_policies import NO_NET, NO_SHELL, shell_request, tool_request
from .test_erased_agents import erase_agent

MakeStore = Callable[..., Awaitable[EventStore]]
OPERATOR_TEXT = '@id("ops-no-shell")\nforbid(principal, action == Action::"tool.invoke", resource == Tool::"shell");'


@asynccontextmanager
async def replica(settings: Settings, caught_up_to: int, timeout_s: float = 10) -> AsyncIterator[FastAPI]:
    """A policy replica started now, once it has applied the agent events up to ``caught_up_to``."""
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.agent_policies.caught_up(CaughtUpRequest(sequence=caught_up_to, timeout_s=timeout_s))
        yield app


def connect_request(agent_id: str) -> DecisionRequest:
    """An action other than a tool call that the baseline allows every agent."""
    return DecisionRequest(
        principal=EntityRef(type="Agent", id=agent_id),
        action="network.connect",
        resource=EntityRef(type="Endpoint", id="example.org:443"),
    )


async def last_on(app: FastAPI, set_id: str) -> int:
    """The stream sequence of the last event of policy set ``set_id``."""
    return int((await app.state.runtime.js.get_last_msg(EVENTS_STREAM, f"evt.policy.{set_id}")).seq)


async def erase_aggregate(make_store: MakeStore, aggregate: str) -> None:
    audit = await make_store("audit")
    await erase(audit, audit.datakeys, EraseRequest(aggregate=aggregate), principal="dpo")


async def test_after_an_agents_erasure_a_fresh_replica_and_decision_point_are_ready_and_forbid_it_everything(
    settings: Settings, make_store: MakeStore, start_runtime: StartRuntime
) -> None:
    store = await make_store("lifecycle")
    await running_agent(store, "shred-1", (NO_SHELL,))
    last = (await running_agent(store, "keep-1", (NO_SHELL,))).sequence
    async with replica(settings, last) as app:
        assert isinstance(await app.state.policy.decide(tool_request("shred-1", "fetch")), Allow)
        set_tip = await last_on(app, "agent-shred-1")
    await erase_agent(make_store, "shred-1")

    for start in range(2):  # every restart after the erasure replays the same events to the same result
        async with replica(settings, last) as app:
            service = app.state.policy
            follower = service.follower
            assert follower.healthy, follower.halted
            assert follower.halted == {}, f"start {start}"
            assert "agent-shred-1" in follower.erased
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://policy") as probe:
                ready = await probe.get("/readyz")
            assert ready.status_code == 200, ready.text
            for request in (
                shell_request("shred-1"),
                tool_request("shred-1", "fetch"),
                connect_request("shred-1"),
            ):
                denied = await service.decide(request)
                assert isinstance(denied, Deny), denied
                assert (denied.code, denied.reason) == ("forbidden", "the agent was erased")
            # Another agent: what the baseline allows, and its own set still applies.
            assert isinstance(await service.decide(tool_request("keep-1", "fetch")), Allow)
            assert isinstance(await service.decide(connect_request("keep-1")), Allow)
            assert isinstance(await service.decide(shell_request("keep-1")), Deny)
            assert isinstance(await service.decide(shell_request("other")), Allow)
            # Nothing was written to the shredded set (it cannot be), and no error was noted.
            assert await last_on(app, "agent-shred-1") == set_tip
            assert not [e for e in app.state.runtime.recent_errors if "shred-1" in e]
            version = follower.version

    # Another service's embedded decision point, started afresh, decides the same at the same policy version.
    runtime = await start_runtime("scheduler")
    point = await runtime.decision_point()
    assert isinstance(point, EmbeddedDecisionPoint)
    assert point.follower.healthy, point.follower.halted
    assert point.version == version
    assert isinstance(await point.decide(tool_request("shred-1", "fetch")), Deny)
    assert isinstance(await point.decide(connect_request("shred-1")), Deny)
    allowed = await point.decide(tool_request("keep-1", "fetch"))
    assert isinstance(allowed, Allow)
    assert allowed.policy_version == version


async def test_a_shredded_operator_set_still_halts_while_a_shredded_agent_set_forbids_its_agent(
    settings: Settings, make_store: MakeStore, start_runtime: StartRuntime
) -> None:
    """Only an agent's own set is read as forbidding its agent everything: an operator's set whose data key is
    gone halts as before (fail closed: an operator acts)."""
    store = await make_store("lifecycle")
    last = (await running_agent(store, "shred-4", (NO_SHELL,))).sequence
    async with replica(settings, last):
        pass
    signer = await make_store("policy")
    await signer.append(
        AGGREGATE_TYPE,
        "ops-1",
        [PolicySetRegistered(set_id="ops-1", cedar=OPERATOR_TEXT)],
        POLICY_SET_CODEC,
        expected=NEW_AGGREGATE,
    )
    await erase_agent(make_store, "shred-4")
    await erase_aggregate(make_store, "policy.ops-1")

    runtime = await start_runtime("scheduler")
    point = await runtime.decision_point()
    assert isinstance(point, EmbeddedDecisionPoint)
    follower = point.follower
    assert list(follower.halted) == ["ops-1"]
    assert "DataKeyDestroyed" in follower.halted["ops-1"]
    assert follower.erased == {"agent-shred-4"}
    assert follower.compiled["agent-shred-4"][0].name == "agent-erased"
    denied = await point.decide(tool_request("other", "fetch"))
    assert isinstance(denied, Deny)
    assert denied.code == "policy_halted"


async def test_a_replica_replaying_configurations_of_an_agent_whose_set_is_shredded_catches_up(
    settings: Settings, make_store: MakeStore
) -> None:
    """The agent's events can still be read, its set's cannot (its key destroyed alone): a configuration applied
    once the replica caught up would write to the set. Before, that raised outside the follower's error handling
    and the agent events were applied again forever (the replica never caught up)."""
    store = await make_store("lifecycle")
    tip = await running_agent(store, "shred-5", (NO_SHELL,))
    async with replica(settings, tip.sequence) as app:
        set_tip = await last_on(app, "agent-shred-5")
    again = [AgentSuspended(reason="r"), AgentConfigured(config=AgentConfig(name="reader", policies=(NO_NET,)))]
    last = (await store.append("agent", "shred-5", again, CODEC, expected=tip))[-1].sequence
    await erase_aggregate(make_store, "policy.agent-shred-5")

    for start in range(2):
        async with replica(settings, last) as app:
            service = app.state.policy
            assert service.follower.healthy, service.follower.halted
            assert "agent-shred-5" in service.follower.erased, f"start {start}"
            assert not app.state.agent_policies._configured  # applied (skipped), not pending
            denied = await service.decide(tool_request("shred-5", "other-tool"))
            assert isinstance(denied, Deny), denied
            assert denied.reason == "the agent was erased"
            assert await last_on(app, "agent-shred-5") == set_tip
            assert not [e for e in app.state.runtime.recent_errors if "shred-5" in e]


async def test_a_running_replica_skips_writing_a_set_shredded_after_it_read_it(
    settings: Settings, make_store: MakeStore
) -> None:
    """The replica read the agent's set before its key was destroyed; a configuration read afterwards cannot be
    written (the key is gone): it is skipped, and the agent events are followed on (before: retried forever)."""
    store = await make_store("lifecycle")
    tip = await running_agent(store, "shred-6", (NO_SHELL,))
    async with replica(settings, tip.sequence) as app:
        set_tip = await last_on(app, "agent-shred-6")
        await erase_aggregate(make_store, "policy.agent-shred-6")
        datakeys = app.state.runtime.datakeys
        for _ in range(500):  # the destruction's notice reached this replica's data key cache
            if "policy.agent-shred-6" not in datakeys._cache and "policy.agent-shred-6" not in datakeys._announced:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the replica still holds the destroyed data key")
        again = [AgentSuspended(reason="r"), AgentConfigured(config=AgentConfig(name="reader", policies=(NO_NET,)))]
        last = (await store.append("agent", "shred-6", again, CODEC, expected=tip))[-1].sequence
        await app.state.agent_policies.caught_up(CaughtUpRequest(sequence=last, timeout_s=10))
        assert not app.state.agent_policies._configured
        assert await last_on(app, "agent-shred-6") == set_tip
        assert not [e for e in app.state.runtime.recent_errors if "shred-6" in e]
