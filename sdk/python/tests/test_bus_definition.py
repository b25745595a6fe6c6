"""The bus limits and subscriptions of an agent's definition (``messaging``) and of policy
(``@cap_resources`` on ``message.send``), against a real gateway: a running sandbox-agent on real NATS with
embedded Cedar policies. Each agent is a callable served its own channel by the harness."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from symbi_agent import Agent, Denied, RateLimited, SymbiAgentError
from symbi_agent.testing import agent_program
from symbi_contracts.lifecycle.config import Messaging
from symbi_sandbox_agent.harness import GatewayHarness

ROOT = Path(__file__).resolve().parents[3]
BASELINE = ROOT / "services" / "policy" / "src" / "symbi_policy" / "baseline.cedar"
DATA_FLOW = ROOT / "examples" / "policies" / "data_flow.cedar"  # phi only to agents cleared for phi

#: Messages from ``capped`` may go at most one a second, with bodies of at most 64 bytes.
CAPPED = """
@id("capped-sender")
@cap_resources("messages_per_s=1,max_message_bytes=64")
permit(principal == Agent::"capped", action == Action::"message.send", resource);
"""


@pytest.fixture
def policies() -> dict[str, str]:
    return {"baseline": BASELINE.read_text(), "capped": CAPPED, "data-flow": DATA_FLOW.read_text()}


def code_of(call: Any) -> str:
    try:
        call()
    except SymbiAgentError as err:
        return err.code
    return "ok"


def burst(agent: Agent) -> dict[str, Any]:
    """Three sends in a row, one large body, and the retry-after of the first refusal."""
    out: dict[str, Any] = {"sends": [code_of(lambda i=i: agent.messages.send("sink", {"n": i})) for i in range(3)]}
    out["large"] = code_of(lambda: agent.messages.send("sink", "x" * 200))
    try:
        for i in range(10):
            agent.messages.send("sink", {"again": i})
    except RateLimited as err:
        out["retry_after"] = err.retry_after
    return out


async def test_the_definition_lowers_the_send_rate_and_the_largest_body(harness: GatewayHarness) -> None:
    messaging = Messaging(messages_per_s=2, max_message_bytes=100)
    run = await harness.run_callable(agent_program(burst), agent_id="slow", messaging=messaging)
    assert run.value["sends"] == ["ok", "ok", "rate_limited"]  # a burst of one second's worth: two
    assert run.value["large"] == "too_large"
    assert 0 < run.value["retry_after"] <= 0.5
    # Without a definition's limits the same agent sends all three (the host allows 1,000/s).
    free = await harness.run_callable(agent_program(burst), agent_id="free")
    assert free.value["sends"] == ["ok", "ok", "ok"]
    assert free.value["large"] == "ok"


async def test_a_policy_caps_the_sender_below_its_definition(harness: GatewayHarness) -> None:
    run = await harness.run_callable(agent_program(burst), agent_id="capped", messaging=Messaging(messages_per_s=50))
    assert run.value["sends"] == ["ok", "rate_limited", "rate_limited"]
    assert run.value["large"] == "too_large"  # 64 bytes at most, by the policy's cap
    outcomes = [(a.action, a.outcome, a.detail.split(":")[0]) for a in run.actions if a.outcome != "allowed"]
    assert ("message.send", "failed", "rate_limited") in outcomes
    assert ("message.send", "failed", "too_large") in outcomes


def fill_small_inbox(agent: Agent) -> list[str]:
    return [code_of(lambda i=i: agent.messages.send("small", {"n": i})) for i in range(5)]


def idle(agent: Agent) -> str:
    """An agent that asks nothing of the bus: its inbox is declared when its run starts."""
    return str(agent.hello()["agent_id"])


def drain(agent: Agent) -> list[Any]:
    got: list[Any] = []
    for _ in range(5):
        got += agent.messages.receive(max=10, timeout_s=1)["messages"]
    return got


async def test_an_inbox_holds_what_its_definition_declares_and_its_subscriptions_from_the_start(
    harness: GatewayHarness,
) -> None:
    small = Messaging(queue_depth=3, subscriptions=("alerts",))
    # A first run of "small" that asks nothing declares its inbox (depth 3, topic "alerts") as it starts.
    await harness.run_callable(agent_program(idle), agent_id="small", messaging=small)
    sent = await harness.run_callable(agent_program(fill_small_inbox), agent_id="filler")
    assert sent.value == ["ok", "ok", "ok", "rate_limited", "rate_limited"]

    def publish(agent: Agent) -> str:
        return code_of(lambda: agent.messages.publish("alerts", {"level": "high"}))

    # (the inbox is full for direct messages; the topic is its own subject, kept for its subscribers)
    assert (await harness.run_callable(agent_program(publish), agent_id="alarm")).value == "ok"
    got = (await harness.run_callable(agent_program(drain), agent_id="small", messaging=small)).value
    assert [m["body"] for m in got] == [{"n": 0}, {"n": 1}, {"n": 2}, {"level": "high"}]
    assert got[-1]["topic"] == "alerts"


def send_phi(agent: Agent) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for to in ("ward", "stranger"):
        try:
            agent.messages.send(to, {"patient": 7}, context={"classification": "phi"})
            out[to] = "ok"
        except Denied as err:
            out[to] = err.details["policies"]
    return out


def read_phi(agent: Agent) -> list[Any]:
    return [m["classification"] for m in agent.messages.receive(max=10, timeout_s=2)["messages"]]


async def test_a_policy_sees_the_recipients_clearances_from_its_definition(harness: GatewayHarness) -> None:
    # "ward" is cleared for phi by its definition, "stranger" declares no clearance; both ran once.
    await harness.run_callable(agent_program(idle), agent_id="ward", messaging=Messaging(clearances=("phi",)))
    await harness.run_callable(agent_program(idle), agent_id="stranger", messaging=Messaging())
    run = await harness.run_callable(agent_program(send_phi), agent_id="clinic")
    assert run.value == {"ward": "ok", "stranger": ["phi-to-agent-needs-clearance"]}
    refused = [a for a in run.actions if a.action == "message.send" and a.outcome == "refused"]
    assert [a.resource for a in refused] == ["stranger"]
    got = await harness.run_callable(agent_program(read_phi), agent_id="ward", messaging=Messaging(clearances=("phi",)))
    assert got.value == ["phi"]
