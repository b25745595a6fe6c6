"""A decision point meets a policy-set event signed with a key its registry has not learnt yet (real nats-server,
two runtimes: the policy service's, which signs, and another service's embedded decision point, whose registry
follower is stopped, so that it lags behind the ``REGISTRY`` stream for as long as the test wants).

After ``symbi keys rotate policy`` the policy service signs with the new key as soon as its own registry follower
applied the version. A halted policy set denies every decision: halting on such an event would be an outage of
every other process until a restart. The registry catches up with the stream and the event is applied; a key in no
registry version still halts its set (fail closed), and a catch-up that cannot read the stream halts nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.crypto import Signer
from symbi_common.decisions import Allow, DecisionRequest, Deny, EntityRef
from symbi_common.envelope import ZERO_HASH
from symbi_common.errors import InfrastructureError
from symbi_common.policy.events import AGGREGATE_TYPE, POLICY_SET_CODEC, PolicySetRegistered
from symbi_common.policy.follower import PolicyFollower
from symbi_common.policy.points import EmbeddedDecisionPoint
from symbi_common.sealing import NEW_AGGREGATE, seal
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings
from symbi_fixtures.key_rotation import rotate, runtime_env, signing_and_lagging

RUN = '@id("agents-run") permit(principal is Agent, action == Action::"task.allocate", resource);'
QUARANTINE = """@id("quarantine-a1") @reason("closed to a1")
forbid(principal == Agent::"a1", action == Action::"task.allocate", resource);"""
ALLOCATE = DecisionRequest(
    principal=EntityRef(type="Agent", id="a1"), action="task.allocate", resource=EntityRef(type="Host", id="h1")
)


@pytest.fixture
async def runtimes(
    nats_url: str, keys_dir: Path, provisioned: NatsClient
) -> AsyncIterator[tuple[ServiceRuntime, ServiceRuntime]]:
    """The policy service's runtime (it signs the policy events) and the scheduler's with an embedded decision
    point; the scheduler's key registry follower is stopped right after its start."""
    env = runtime_env(nats_url, keys_dir, SYMBI_POLICY__DECISION_LOG="false")
    lagging = ServiceRuntime(
        "scheduler", load_settings(env={**env, "SYMBI_POLICY__ENFORCEMENT": "embedded"}), use_database=False
    )
    policy = ServiceRuntime(
        "policy", load_settings(env={**env, "SYMBI_POLICY__ENFORCEMENT": "allow-all"}), use_database=False
    )
    async with signing_and_lagging(policy, lagging, provisioned, keys_dir) as pair:
        yield pair


async def _rotate_policy_key(policy: ServiceRuntime, lagging: ServiceRuntime, nc: NatsClient, keys_dir: Path) -> str:
    """`symbi keys rotate policy`; the policy runtime signs with the new key, the lagging one has not seen it."""
    version = lagging.registry.version
    new_key = await rotate(policy, nc, keys_dir)
    await asyncio.sleep(0.2)
    assert lagging.registry.version == version
    assert lagging.registry.key(new_key) is None
    return new_key


async def test_a_policy_set_signed_with_a_key_the_registry_has_not_learnt_yet_applies_without_halting(
    runtimes: tuple[ServiceRuntime, ServiceRuntime], provisioned: NatsClient, keys_dir: Path
) -> None:
    policy, lagging = runtimes
    (run,) = await policy.store.append(
        AGGREGATE_TYPE, "run", [PolicySetRegistered(set_id="run", cedar=RUN)], POLICY_SET_CODEC, expected=NEW_AGGREGATE
    )
    point = await lagging.decision_point()  # the runtime's own wiring: open_decision_point
    assert isinstance(point, EmbeddedDecisionPoint)
    follower = point.follower
    assert await follower.wait_for(run.sequence)
    assert isinstance(await point.decide(ALLOCATE), Allow)

    new_key = await _rotate_policy_key(policy, lagging, provisioned, keys_dir)
    (quarantine,) = await policy.store.append(
        AGGREGATE_TYPE,
        "quarantine",
        [PolicySetRegistered(set_id="quarantine", cedar=QUARANTINE)],
        POLICY_SET_CODEC,
        expected=NEW_AGGREGATE,
    )
    assert quarantine.header.signing_key_id == new_key
    assert await follower.wait_for(quarantine.sequence)

    # Applied, not halted: the registry caught up with REGISTRY, and the new set decides.
    assert follower.halted == {}
    assert follower.healthy
    assert lagging.registry.key(new_key) is not None
    decision = await point.decide(ALLOCATE)
    assert isinstance(decision, Deny)
    assert (decision.code, decision.policies) == ("forbidden", ("quarantine-a1",))
    assert decision.policy_version == quarantine.sequence

    # A key in no registry version still halts its set (fail closed): every decision denies.
    forger = Signer.generate()
    forged, _ = seal(
        signer=forger, producer="policy", data_key=await policy.datakeys.current("policy.forged"),
        aggregate_type=AGGREGATE_TYPE, aggregate_id="forged", aggregate_version=1,
        event_type="policy.set_registered", schema_version=1,
        payload=POLICY_SET_CODEC.encode(PolicySetRegistered(set_id="forged", cedar=RUN)), prev_hash=ZERO_HASH,
    )  # fmt: skip
    ack = await provisioned.jetstream().publish("evt.policy.forged", forged)
    assert await follower.wait_for(ack.seq)
    assert list(follower.halted) == ["forged"]
    assert f"signing key {forger.key_id} is not in the key registry" in follower.halted["forged"]
    halted = await point.decide(ALLOCATE)
    assert isinstance(halted, Deny)
    assert halted.code == "policy_halted"


async def test_a_catch_up_that_cannot_read_the_stream_halts_nothing_and_is_tried_again(
    runtimes: tuple[ServiceRuntime, ServiceRuntime], provisioned: NatsClient, keys_dir: Path
) -> None:
    policy, lagging = runtimes
    calls: list[str] = []

    async def flaky_catch_up() -> int:
        calls.append("catch_up")
        if len(calls) == 1:
            raise InfrastructureError("REGISTRY is away a moment")
        return await lagging.keys.catch_up()

    follower = PolicyFollower(
        lagging.js, lagging.registry, lagging.datakeys, service="scheduler", catch_up_registry=flaky_catch_up
    )
    await follower.start(timeout=10.0)
    try:
        new_key = await _rotate_policy_key(policy, lagging, provisioned, keys_dir)
        (quarantine,) = await policy.store.append(
            AGGREGATE_TYPE,
            "quarantine",
            [PolicySetRegistered(set_id="quarantine", cedar=QUARANTINE)],
            POLICY_SET_CODEC,
            expected=NEW_AGGREGATE,
        )
        assert quarantine.header.signing_key_id == new_key
        assert await follower.wait_for(quarantine.sequence)
        assert calls == ["catch_up", "catch_up"]  # the batch was applied again after the failed catch-up
        assert follower.halted == {}
        assert follower.rejected == []
        assert "quarantine" in follower.compiled
        decision = follower.engine.decide(ALLOCATE)
        assert isinstance(decision, Deny)
        assert decision.policies == ("quarantine-a1",)
    finally:
        await follower.stop()
