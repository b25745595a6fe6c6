"""The policy service's agent follower meets an agent event signed with a key its registry has not learnt yet
(real nats-server; the policy service in-process, its key registry follower stopped after the start so that it lags
behind the ``REGISTRY`` stream; a lifecycle runtime that signs with its rotated key as soon as it learnt it).

Refused, the event's effect would be lost for that process: the agent's own policies never activated. The registry
catches up with the stream and the event is applied; a key in no registry version is still refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.commands import CommandClient
from symbi_common.crypto import Signer
from symbi_common.envelope import ZERO_HASH
from symbi_common.sealing import seal
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_contracts.lifecycle.events import CODEC, AgentRegistered
from symbi_contracts.policy.commands import CaughtUpRequest
from symbi_fixtures.key_rotation import publish_key_files, rotate
from symbi_policy.agent_events import AgentPolicyFollower
from symbi_policy.main import build_app

from .conftest import RunningPolicy, running_agent, service_env
from .test_agent_policies import NO_SHELL, wait_set


@pytest.fixture
async def lagging_policy(
    nats_url: str, keys_dir: Path, provisioned: NatsClient, operator_headers: dict[str, str]
) -> AsyncIterator[RunningPolicy]:
    """The real policy service app whose key registry follower is stopped right after its start."""
    await publish_key_files(provisioned, keys_dir)  # the key files' version is on the stream (as `symbi up` does)
    app = build_app(load_settings(env=service_env(nats_url, keys_dir)))
    async with app.router.lifespan_context(app):
        (follow,) = [t for t in asyncio.all_tasks() if t.get_name() == "keys:follow"]
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://policy", headers=operator_headers) as http:
            runtime = app.state.runtime
            yield RunningPolicy(app, http, app.state.policy, CommandClient(runtime.nc, timeout=5.0), runtime)


@pytest.fixture
async def lifecycle_runtime(nats_url: str, keys_dir: Path) -> AsyncIterator[ServiceRuntime]:
    """A lifecycle runtime following ``REGISTRY`` (it signs with a rotated key as soon as it learnt it)."""
    env = service_env(nats_url, keys_dir, SYMBI_POLICY__ENFORCEMENT="allow-all")
    runtime = ServiceRuntime("lifecycle", load_settings(env=env), use_database=False)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


async def test_an_agent_event_signed_with_a_key_the_registry_has_not_learnt_yet_is_applied(
    lagging_policy: RunningPolicy, lifecycle_runtime: ServiceRuntime, provisioned: NatsClient, keys_dir: Path
) -> None:
    policy, lifecycle = lagging_policy, lifecycle_runtime
    agents: AgentPolicyFollower = policy.app.state.agent_policies
    registry = policy.runtime.registry
    version = registry.version

    # `symbi keys rotate lifecycle`: the lifecycle runtime signs with the new key; the policy service has not seen it.
    new_key = await rotate(lifecycle, provisioned, keys_dir)
    await asyncio.sleep(0.2)
    assert registry.version == version
    assert registry.key(new_key) is None

    await running_agent(lifecycle.store, "rotated-1", (NO_SHELL,))  # registered, ready, task_assigned
    await wait_set(policy, "agent-rotated-1", "active")
    assert registry.key(new_key) is not None
    assert not [e for e in policy.runtime.recent_errors if "not applied" in e], policy.runtime.recent_errors

    # A key in no registry version is still refused (reported), once the registry is current.
    forger = Signer.generate()
    forged, _ = seal(
        signer=forger, producer="lifecycle", data_key=await lifecycle.datakeys.current("agent.forged-1"),
        aggregate_type="agent", aggregate_id="forged-1", aggregate_version=1, event_type="agent.registered",
        schema_version=1, payload=CODEC.encode(AgentRegistered(agent_id="forged-1", config=AgentConfig(name="x"))),
        prev_hash=ZERO_HASH,
    )  # fmt: skip
    ack = await provisioned.jetstream().publish("evt.agent.forged-1", forged)
    assert (await agents.caught_up(CaughtUpRequest(sequence=ack.seq, timeout_s=5))).position == ack.seq
    refused = [e for e in policy.runtime.recent_errors if "not applied" in e]
    assert len(refused) == 1
    assert f"evt.agent.forged-1 ({ack.seq})" in refused[0]
    assert f"signing key {forger.key_id} is not in the key registry" in refused[0]
