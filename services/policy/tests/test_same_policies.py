"""An agent reconfigured with the policies its set has changes nothing: no policy event, the same policy version.

Before, each such configuration appended a revision with the same text (the policy version moved, every engine
was rebuilt and its decisions made afresh). The revision is still written when an agent event between the set's
last and the new one could be applied late by another replica: its source keeps that older one out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from symbi_common.decisions import Allow, Deny
from symbi_common.eventstore import EventStore
from symbi_common.policy.agent_sets import agent_policy_text
from symbi_common.policy.events import PolicySetState
from symbi_common.settings import Settings
from symbi_common.streams import EVENTS_STREAM
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_contracts.lifecycle.events import CODEC, AgentConfigured, AgentSuspended
from symbi_policy.domain import FollowAgent, decide_set

from .conftest import RunningPolicy, running_agent, running_policy
from .test_agent_policies import NO_NET, NO_SHELL, shell_request, tool_request
from .test_agent_set_order import fold, wait_applied

MakeStore = Callable[..., Awaitable[EventStore]]


def test_the_same_text_is_no_change_once_the_set_followed_the_change_before() -> None:
    shell, net = agent_policy_text("a-5", (NO_SHELL,)), agent_policy_text("a-5", (NO_NET,))
    state = fold(PolicySetState(set_id="agent-a-5"), FollowAgent(agent_id="a-5", source=10, cedar=shell))
    # Configured at 30 with the same policies; the agent's change before it (its ready, at 10) is the set's last.
    assert decide_set(state, FollowAgent(agent_id="a-5", source=30, cedar=shell, previous=10)) == []
    # No policies of its own, twice: the second time nothing either.
    none = fold(state, FollowAgent(agent_id="a-5", source=40, previous=10))
    assert (none.revision, none.source) == (2, 40)
    assert decide_set(none, FollowAgent(agent_id="a-5", source=50, previous=40)) == []
    # A configuration at 20 the set has not followed (deferred, or a replica applying it late): the same text
    # from 30 is recorded with its source, so the one at 20 cannot come after it.
    same = fold(state, FollowAgent(agent_id="a-5", source=30, cedar=shell, previous=20))
    assert (same.cedar, same.revision, same.source) == (shell, 2, 30)
    assert decide_set(same, FollowAgent(agent_id="a-5", source=20, cedar=net, previous=10)) == []
    # Not knowing the change before (None): recorded, as before.
    assert fold(state, FollowAgent(agent_id="a-5", source=30, cedar=shell)).revision == 2


async def test_a_reconfiguration_with_the_same_policies_keeps_the_policy_version(
    policy: RunningPolicy, make_store: MakeStore, js: JetStreamContext
) -> None:
    store = await make_store("lifecycle")
    tip = await running_agent(store, "same-1", (NO_SHELL,))
    await wait_applied(policy, tip.sequence)
    follower = policy.service.follower
    version, stored = follower.version, (await js.get_last_msg(EVENTS_STREAM, "evt.policy.agent-same-1")).seq

    again = [AgentSuspended(reason="r"), AgentConfigured(config=AgentConfig(name="reader", policies=(NO_SHELL,)))]
    tip = (await store.append("agent", "same-1", again, CODEC, expected=tip))[-1].tip
    await wait_applied(policy, tip.sequence)  # answered: the configuration's position is passed
    assert (await js.get_last_msg(EVENTS_STREAM, "evt.policy.agent-same-1")).seq == stored
    assert (follower.version, follower.states["agent-same-1"].revision) == (version, 1)
    assert isinstance(await policy.service.decide(shell_request("same-1")), Deny)

    # A real change still applies.
    changed = [AgentConfigured(config=AgentConfig(name="reader", policies=(NO_NET,)))]
    tip = (await store.append("agent", "same-1", changed, CODEC, expected=tip))[-1].tip
    await wait_applied(policy, tip.sequence)
    state = follower.states["agent-same-1"]
    assert (state.revision, state.source) == (2, tip.sequence)


async def test_of_configurations_read_together_only_the_newest_is_applied(
    settings: Settings, operator_headers: dict[str, str], make_store: MakeStore
) -> None:
    """Two configurations read together, the older with the set's text: only the newest is applied, and recorded,
    since the one before it (never applied here) could still be applied late by another replica. Both are stored
    before the policy service starts, so its follower reads them in one go (appended to a running service, the
    first could be delivered before the second is stored, and then be applied on its own)."""
    store = await make_store("lifecycle")
    tip = await running_agent(store, "same-2", (NO_SHELL,))
    both = [
        AgentConfigured(config=AgentConfig(name="reader", policies=(NO_SHELL,))),
        AgentConfigured(config=AgentConfig(name="reader", policies=(NO_NET,))),
    ]
    recs = await store.append("agent", "same-2", both, CODEC, expected=tip)
    async with running_policy(settings, operator_headers) as policy:
        await wait_applied(policy, recs[-1].sequence)
        state = policy.service.follower.states["agent-same-2"]
        assert (state.cedar, state.source) == (agent_policy_text("same-2", (NO_NET,)), recs[-1].sequence)
        texts = [agent_policy_text("same-2", specs) for specs in ((NO_SHELL,), (NO_NET,))]
        assert state.revision == 2, "the set was written for a configuration other than the ready's and the newest"
        late = FollowAgent(agent_id="same-2", source=recs[0].sequence, cedar=texts[0])
        assert (await policy.service.sets.execute("agent-same-2", late))[1] == []
        assert isinstance(await policy.service.decide(shell_request("same-2")), Allow)
        assert isinstance(await policy.service.decide(tool_request("same-2", "fetch")), Deny)
