"""``sandbox.start`` behind the real embedded decision point: Cedar policy sets as signed policy events.

The shipped baseline lets agents start sandboxes; a policy forbidding Tier 1 for sensitive work refuses
those starts with its reason and record, while a Tier 2 start of the same agent runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.events import AGGREGATE_TYPE, POLICY_SET_CODEC, PolicySetRegistered
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.settings import Settings
from symbi_contracts.sandbox_agent.events import ExecutionExited, ExecutionRefused

from .conftest import Scheduler, containers_of, running_agent

BASELINE = Path(__file__).resolve().parents[3] / "examples" / "policies" / "baseline.cedar"
NO_TIER1 = """
@id("gvisor-only")
@reason("this deployment runs workloads under gVisor only")
forbid (principal is Agent, action == Action::"sandbox.start", resource)
when { context has security_tier && context.security_tier == "tier1" };
"""


async def test_a_cedar_policy_refuses_tier1_starts_and_allows_tier2(
    make_store: Any,
    scheduler: Scheduler,
    agent_settings: Callable[..., Settings],
    docker_client: docker.DockerClient,
    host_id: str,
) -> None:
    policy = await make_store("policy")
    for set_id, cedar in (("baseline", BASELINE.read_text()), ("gvisor-only", NO_TIER1)):
        compile_policies(set_id, cedar)  # the policy service would refuse an invalid set; so does this test
        event = PolicySetRegistered(set_id=set_id, cedar=cedar)
        await policy.append(AGGREGATE_TYPE, set_id, [event], POLICY_SET_CODEC, expected=NEW_AGGREGATE)
    settings = agent_settings(SYMBI_POLICY__ENFORCEMENT="embedded", SYMBI_POLICY__DECISION_LOG="false")
    async with running_agent(settings) as agent:
        refused_id = await scheduler.submit(agent.host_id, ["echo", "hi"], tier="tier1")
        refused = await scheduler.result(refused_id)
        assert isinstance(refused.terminal, ExecutionRefused)
        assert refused.terminal.code == "policy_denied"
        assert "gVisor only" in refused.terminal.reason
        assert refused.terminal.decision is not None
        assert (refused.terminal.decision.effect, refused.terminal.decision.policies) == ("deny", ("gvisor-only",))

        ran_id = await scheduler.submit(agent.host_id, ["echo", "hi"], tier="tier2")
        ran = await scheduler.result(ran_id)
        assert isinstance(ran.terminal, ExecutionExited)
        assert ran.stdout == b"hi\n"
    assert not containers_of(docker_client, host_id)
