"""The communication bus between agents: real NATS/JetStream, real Docker (runc and gVisor), real Cedar policies.

Agents are Python workloads with the SDK in the image of ``deploy/host/agent-image.sh`` (see test_channel.py);
each talks to its host's gateway over its own socket, and the gateway carries its messages on JetStream.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from symbi_common.bus_streams import inbox_name
from symbi_common.settings import Settings
from symbi_contracts.bus import DEADLETTER_STREAM, MESSAGES_STREAM
from symbi_contracts.sandbox_agent.events import ExecutionExited

from .conftest import Scheduler, limits, running_agent
from .test_actions import BASELINE, actions, register_policies
from .test_channel import agent_image

__all__ = ["agent_image"]  # a fixture, used by name

ROOT = Path(__file__).resolve().parents[3]
DATA_FLOW = (ROOT / "examples" / "policies" / "data_flow.cedar").read_text()

BOB = """
import json, time
from symbi_agent import Agent
got = {}
with Agent() as a:
    a.messages.subscribe("findings")
    a.messages.send("alice", {"ready": True})
    deadline = time.time() + 60
    while len(got) < 3 and time.time() < deadline:
        for m in a.messages.receive(timeout_s=2)["messages"]:
            if m["kind"] == "request":
                a.messages.reply(m, {"answer": m["body"]["q"] * 2})
            got[m["kind"]] = m
print(json.dumps(got))
"""

ALICE = """
import json, os, socket, time
from symbi_agent import Agent, SymbiAgentError

def code(call):
    try:
        call()
        return "ok"
    except SymbiAgentError as err:
        return err.code

out = {}
with Agent() as a:
    ready, deadline = [], time.time() + 60
    while not ready and time.time() < deadline:
        ready = a.messages.receive(timeout_s=2)["messages"]
    out["ready_from"] = ready[0]["from"]
    a.messages.publish("findings", {"n": 1})
    a.messages.send("bob", {"hello": "bob"})
    out["reply"] = a.messages.request("bob", {"q": 21}, timeout_s=30)
    out["phi"] = code(lambda: a.messages.send("bob", "x", context={"classification": "phi"}))
    out["claims"] = code(lambda: a.call("messages.send", {"to": "bob", "body": "x", "from": "carol"}))
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(os.environ["SYMBI_SOCKET"])
    f = raw.makefile("rwb")
    forged = {"v": 1, "id": "f", "op": "messages.send", "agent_id": "carol", "args": {"to": "bob", "body": "x"}}
    f.write(json.dumps(forged).encode() + b"\\n")
    f.flush()
    out["forged"] = json.loads(f.readline())["error"]["code"]
print(json.dumps(out))
"""


async def policies(make_store: Any, **extra: str) -> None:
    await register_policies(make_store, {"baseline": BASELINE.read_text(), "data-flow": DATA_FLOW, **extra})


def embedded(agent_settings: Callable[..., Settings], **extra: str) -> Settings:
    return agent_settings(SYMBI_POLICY__ENFORCEMENT="embedded", SYMBI_POLICY__DECISION_LOG="false", **extra)


async def run_agent(
    scheduler: Scheduler, host_id: str, agent_id: str, code: str, image: str, tier: str = "tier1"
) -> str:
    cmd = ["python3", "-c", code]
    lim = limits(execution_timeout_s=90)
    return await scheduler.submit(host_id, cmd, tier=tier, actions=True, image=image, agent_id=agent_id, lim=lim)


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_two_agents_exchange_direct_topic_and_request_messages(
    tier: str, agent_image: str, make_store: Any, scheduler: Scheduler, agent_settings: Callable[..., Settings]
) -> None:
    await policies(make_store)
    async with running_agent(embedded(agent_settings)) as agent:
        bob = await run_agent(scheduler, agent.host_id, "bob", BOB, agent_image, tier)
        alice = await run_agent(scheduler, agent.host_id, "alice", ALICE, agent_image, tier)
        rb, ra = await scheduler.result(bob, timeout=120), await scheduler.result(alice, timeout=120)
    assert isinstance(ra.terminal, ExecutionExited), (ra.terminal, ra.stderr[-2000:])
    assert isinstance(rb.terminal, ExecutionExited), (rb.terminal, rb.stderr[-2000:])
    got, out = json.loads(rb.stdout), json.loads(ra.stdout)
    # Each message arrived once, named by its sender's listener, with its body decrypted.
    assert (got["direct"]["from"], got["direct"]["body"]) == ("alice", {"hello": "bob"})
    assert (got["topic"]["from"], got["topic"]["topic"], got["topic"]["body"]) == ("alice", "findings", {"n": 1})
    assert (got["request"]["from"], got["request"]["body"]) == ("alice", {"q": 21})
    assert out["ready_from"] == "bob"
    assert (out["reply"]["from"], out["reply"]["body"], out["reply"]["kind"]) == ("bob", {"answer": 42}, "reply")
    # PHI to an agent without the clearance is denied; a request cannot name or claim another sender.
    assert (out["phi"], out["claims"], out["forged"]) == ("denied", "malformed_request", "identity_refused")
    sent = [(a.action, a.resource, a.outcome) for a in actions(ra.events)]
    assert sent[:5] == [
        ("message.receive", "inbox", "allowed"),
        ("message.send", "findings", "allowed"),
        ("message.send", "bob", "allowed"),
        ("message.send", "bob", "allowed"),
        ("message.send", "bob", "refused"),
    ]
    refused = actions(ra.events)[4]
    assert refused.decision is not None
    assert refused.decision.policies == ("phi-to-agent-needs-clearance",)
    assert {a.agent_id for a in actions(ra.events)} == {"alice"}
    received = [a for a in actions(rb.events) if a.action == "message.receive" and a.detail.startswith("received")]
    assert sum(a.detail.count("<alice") for a in received) == 3
    # Delivered and acknowledged: nothing waits in the inboxes, nothing went to the dead letters.
    js = scheduler.nc.jetstream()
    for name in ("alice", "bob"):
        assert (await js.consumer_info(MESSAGES_STREAM, inbox_name(name))).num_pending == 0
    assert (await js.stream_info(DEADLETTER_STREAM)).state.messages == 0
