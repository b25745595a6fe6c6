"""The scheduler's model follower meets an agent event signed with a key its registry has not learnt yet (real
nats-server; a scheduler runtime whose key registry follower is stopped after its start, so that it lags behind the
``REGISTRY`` stream; a lifecycle runtime that signs with its rotated key as soon as it learnt it).

Rejected, the event would be lost for that process (its model would never see the agent Ready). The registry
catches up with the stream and the event is applied; a catch-up that cannot read the stream rejects nothing (the
batch is applied again).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.errors import InfrastructureError
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_contracts.lifecycle.events import CODEC, AgentReady, AgentRegistered, AgentStatus
from symbi_fixtures.key_rotation import eventually, rotate, runtime_env, signing_and_lagging
from symbi_scheduler.follower import EventFollower
from symbi_scheduler.model import Model


@pytest.fixture
async def runtimes(
    nats_url: str, keys_dir: Path, provisioned: NatsClient
) -> AsyncIterator[tuple[ServiceRuntime, ServiceRuntime]]:
    """A lifecycle runtime (it signs) and a scheduler runtime whose key registry follower is stopped."""
    env = runtime_env(nats_url, keys_dir, SYMBI_POLICY__ENFORCEMENT="allow-all")
    lagging = ServiceRuntime("scheduler", load_settings(env=env), use_database=False)
    lifecycle = ServiceRuntime("lifecycle", load_settings(env=env), use_database=False)
    async with signing_and_lagging(lifecycle, lagging, provisioned, keys_dir) as pair:
        yield pair


async def test_an_event_signed_with_a_key_the_registry_has_not_learnt_yet_reaches_the_model(
    runtimes: tuple[ServiceRuntime, ServiceRuntime], provisioned: NatsClient, keys_dir: Path
) -> None:
    lifecycle, lagging = runtimes
    calls: list[str] = []

    async def flaky_catch_up() -> int:  # the first catch-up cannot read REGISTRY: the batch is applied again
        calls.append("catch_up")
        if len(calls) == 1:
            raise InfrastructureError("REGISTRY is away a moment")
        return await lagging.keys.catch_up()

    model = Model()
    follower = EventFollower(lagging.js, lagging.store, model, lambda: None, catch_up_registry=flaky_catch_up)
    task = lagging.spawn(follower.run(), "test:model")
    try:
        await asyncio.wait_for(follower.synced.wait(), 10)
        new_key = await rotate(lifecycle, provisioned, keys_dir)
        await asyncio.sleep(0.2)
        assert lagging.registry.key(new_key) is None

        events = [AgentRegistered(agent_id="rotated-1", config=AgentConfig(name="reader")), AgentReady()]
        records = await lifecycle.store.append("agent", "rotated-1", events, CODEC, expected=NEW_AGGREGATE)
        assert records[-1].header.signing_key_id == new_key
        await eventually(lambda: follower.position >= records[-1].sequence, "the model follower reads both events")

        agent = model.agents["rotated-1"]
        assert (agent.version, agent.status) == (2, AgentStatus.READY)
        assert follower.rejected == 0
        assert calls == ["catch_up", "catch_up"]  # once per batch: the second event needed none
        assert lagging.registry.key(new_key) is not None
    finally:
        await follower.follower.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
