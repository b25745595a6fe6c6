"""Remembered bus decisions and a halted policy set, behind the real embedded decision point (a policy follower
on real NATS following signed policy events).

A ``message.send`` answer is remembered per policy engine. When a policy event cannot be applied the follower
halts its set in place at once, but replaces the engine (which then denies everything, ``policy_halted``) only
once it has read what is pending: in between, no remembered answer may be used. Once the set is fixed, answers
are remembered again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient
from symbi_common.decisions import Allow, DecisionRequest, Deny, EntityRef
from symbi_common.policy.events import AGGREGATE_TYPE, POLICY_SET_CODEC, PolicySetRegistered, PolicySetRetired
from symbi_common.policy.points import EmbeddedDecisionPoint
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings
from symbi_sandbox_agent.bus.decisions import RememberedDecisions

from .test_actions import BASELINE, register_policies

SEND = DecisionRequest(
    principal=EntityRef(type="Agent", id="alice"),
    action="message.send",
    resource=EntityRef(type="Agent", id="bob"),
    context={"size_bytes": 10},
)


async def until(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


async def test_remembered_sends_are_not_used_while_a_policy_set_is_halted(
    nats_url: str, keys_dir: Path, provisioned: NatsClient, make_store: Any
) -> None:
    await register_policies(make_store, {"baseline": BASELINE.read_text()})
    env = {
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": "error",
        "SYMBI_POLICY__ENFORCEMENT": "embedded",
        "SYMBI_POLICY__DECISION_LOG": "false",
    }
    rt = ServiceRuntime("sandbox-agent", load_settings(env=env), use_database=False)
    await rt.start()
    try:
        point = await rt.decision_point()
        assert isinstance(point, EmbeddedDecisionPoint)
        follower = point.follower
        await until(lambda: len(follower.engine) > 0, "the baseline was not followed")
        remembered = RememberedDecisions(point)
        assert isinstance(await remembered.decide(SEND), Allow)
        assert isinstance(await remembered.decide(SEND), Allow)
        assert remembered.hits == 1  # the second answer came from memory

        # The window: the set is halted in place, the engine not yet replaced. Nothing comes from memory.
        follower.halted["baseline"] = "an event of it could not be applied (this test)"
        assert isinstance(await remembered.decide(SEND), Allow)  # (the old engine's own answer, asked again)
        assert remembered.hits == 1
        del follower.halted["baseline"]

        # A real halt: a policy event that cannot be applied (its text does not compile).
        policy = await make_store("policy")
        broken = PolicySetRegistered(set_id="broken", cedar="permit(principal, action, resource) when {")
        stored = await policy.append(AGGREGATE_TYPE, "broken", [broken], POLICY_SET_CODEC, expected=NEW_AGGREGATE)
        await until(lambda: "broken" in follower.halted, "the broken set was not halted")
        await until(lambda: follower.engine.halted, "the engine was not replaced by a halted one")
        denied = await remembered.decide(SEND)
        assert isinstance(denied, Deny)
        assert denied.code == "policy_halted"  # not the remembered allow
        assert denied.policies == ("broken",)
        assert remembered.hits == 1

        # Fixed (the set retired): allowed again, and remembered again.
        retired = PolicySetRetired(reason="broken text", revision=2)
        await policy.append(AGGREGATE_TYPE, "broken", [retired], POLICY_SET_CODEC, expected=stored[-1].tip)
        await until(lambda: not follower.halted and not follower.engine.halted, "the set was not fixed")
        assert isinstance(await remembered.decide(SEND), Allow)
        assert isinstance(await remembered.decide(SEND), Allow)
        assert remembered.hits == 2
    finally:
        await rt.stop()
