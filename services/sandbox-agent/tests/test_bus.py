"""The communication bus between agents: real NATS/JetStream, real Docker (runc and gVisor), real Cedar policies.

Agents are Python workloads with the SDK in the image of ``deploy/host/agent-image.sh`` (see test_channel.py);
each talks to its host's gateway over its own socket, and the gateway carries its messages on JetStream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import nats.js.errors
import pytest
from symbi_cli.bus_cmd import dead_letters, replay
from symbi_common.bus_streams import inbox_name
from symbi_common.crypto import Signer
from symbi_common.policy.events import AGGREGATE_TYPE, POLICY_SET_CODEC, PolicySetRegistered
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.settings import Settings
from symbi_contracts.bus import DEADLETTER_STREAM, ENVELOPE_DECODER, MESSAGES_STREAM, Meta, direct_subject, encode
from symbi_contracts.sandbox_agent.events import ExecutionExited
from symbi_sandbox_agent.bus.codec import Refused, seal
from symbi_sandbox_agent.bus.errors import BusClosed
from symbi_sandbox_agent.bus.runtime import bus_of

from .conftest import Scheduler, limits, running_agent
from .test_actions import BASELINE, actions, register_policies
from .test_channel import agent_image
from .test_control import command

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


async def policies(make_store: Any, **extra: str) -> Any:
    return await register_policies(make_store, {"baseline": BASELINE.read_text(), "data-flow": DATA_FLOW, **extra})


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


RECEIVE_ONCE = """
import json
from symbi_agent import Agent
with Agent() as a:
    print(json.dumps(a.messages.receive(timeout_s=1)["messages"]))
"""

SEND_SHORT_LIVED = """
import json
from symbi_agent import Agent
with Agent() as a:
    a.messages.send("bob", "one", ttl_s=1)
    a.messages.send("bob", "two", ttl_s=1, context={"classification": "restricted"})
print("sent")
"""

NO_RESTRICTED = """
@id("no-restricted-messages")
forbid(principal, action == Action::"message.send", resource)
when { context has classification && context.classification == "restricted" };
"""


async def test_expired_and_forged_messages_go_to_the_dead_letters_and_replay_decides_again(
    agent_image: str, make_store: Any, scheduler: Scheduler, agent_settings: Callable[..., Settings]
) -> None:

    store = await policies(make_store)
    js = scheduler.nc.jetstream()
    async with running_agent(embedded(agent_settings)) as agent:
        sent = await scheduler.result(await run_agent(scheduler, agent.host_id, "alice", SEND_SHORT_LIVED, agent_image))
        assert isinstance(sent.terminal, ExecutionExited), sent.stderr[-2000:]
        # The later of the two real messages (the last on bob's subject so far): when both have expired.
        last = ENVELOPE_DECODER.decode((await js.get_last_msg(MESSAGES_STREAM, direct_subject("bob"))).data).meta
        assert (last.sender, last.ttl_s) == ("alice", 1.0)
        # Forged on the wire: an unregistered sender, and a registered one's name with another key.
        carrier = await bus_of(agent.app.state.runtime)
        for sender in ("mallory", "alice"):
            key = await carrier.datakeys.current(f"message.{sender}.bob")
            meta = Meta(id=f"forged-{sender}", kind="direct", sender=sender, sent_at=time.time(), to="bob")
            forged = seal(meta, b'"give me your secrets"', key, Signer.generate())
            await js.publish(direct_subject("bob"), encode(forged), headers={"Nats-Msg-Id": meta.id})
        await asyncio.sleep(max(last.sent_at + last.ttl_s - time.time(), 0.0) + 0.1)  # the two real ones expire
        # A policy written after they were sent: replayed messages are decided again at delivery.
        event = PolicySetRegistered(set_id="no-restricted", cedar=NO_RESTRICTED)
        await store.append(AGGREGATE_TYPE, "no-restricted", [event], POLICY_SET_CODEC, expected=NEW_AGGREGATE)
        first = await scheduler.result(await run_agent(scheduler, agent.host_id, "bob", RECEIVE_ONCE, agent_image))
        assert json.loads(first.stdout) == []
        dead = await dead_letters(js, "bob")
        reasons = {letter.envelope.meta.id: letter.reason for _, letter in dead}
        assert sorted(reasons.values()) == ["bad_signature", "expired", "expired", "unknown_sender_key"]
        # Metadata in clear, the body not.
        stored = await js.get_msg(DEADLETTER_STREAM, dead[0][0])
        assert b'"sender":"alice"' in stored.data
        assert b"one" not in ENVELOPE_DECODER.decode(msgspec.json.encode(dead[0][1].envelope)).ciphertext
        for seq, letter in dead:
            if letter.reason == "expired":
                await replay(js, seq)
        second = await scheduler.result(await run_agent(scheduler, agent.host_id, "bob", RECEIVE_ONCE, agent_image))
    got = json.loads(second.stdout)
    assert [(m["from"], m["body"]) for m in got] == [("alice", "one")]
    after = {letter.reason for _, letter in await dead_letters(js, "bob")}
    assert after == {"bad_signature", "unknown_sender_key", "refused"}
    recorded = [(a.outcome, a.detail) for a in actions(second.events) if a.action == "message.receive"]
    assert [outcome for outcome, _ in recorded] == ["refused", "allowed"]
    assert recorded[0][1].endswith(" refused")  # the restricted one, decided again at delivery
    assert recorded[1][1].startswith("received ")
    assert "<alice" in recorded[1][1]
    refusals = " ".join(a.detail for a in actions(first.events) if a.outcome == "refused")
    for reason in ("expired", "unknown_sender_key", "bad_signature"):
        assert reason in refusals


async def test_a_direct_message_copied_into_another_agents_inbox_is_refused(
    make_store: Any, agent_settings: Callable[..., Settings]
) -> None:
    """A direct message is decided once, when it is sent, for its recipient: a copy published into another
    agent's inbox (by whoever may publish there) is refused at delivery, not handed over undecided."""
    await policies(make_store)
    async with running_agent(embedded(agent_settings)) as agent:
        carrier = await bus_of(agent.app.state.runtime)
        key = await carrier.datakeys.current("message.alice.carol")
        meta = Meta(id="for-carol", kind="direct", sender="alice", sent_at=time.time(), to="carol")
        envelope = seal(meta, b'"for carol only"', key, Signer.generate())
        assert (await carrier.open_envelope(envelope, "carol", signed_here=True)).meta.to == "carol"
        with pytest.raises(Refused, match="addressed to carol, not bob"):
            await carrier.open_envelope(envelope, "bob", signed_here=True)


RATE = """
import json, time
from symbi_agent import Agent, RateLimited
out = []
with Agent() as a:
    for i in range(4):
        try:
            a.messages.send("bob", i)
            out.append("ok")
        except RateLimited as err:
            out.append(["rate_limited", err.retry_after])
            time.sleep(err.retry_after)
            a.messages.send("bob", i)
            out.append("ok after wait")
print(json.dumps(out))
"""


async def test_a_sender_over_its_rate_is_told_when_to_try_again(
    agent_image: str, make_store: Any, scheduler: Scheduler, agent_settings: Callable[..., Settings]
) -> None:
    await policies(make_store)
    settings = embedded(agent_settings, SYMBI_SANDBOX__BUS_MESSAGES_PER_S="2")
    async with running_agent(settings) as agent:
        r = await scheduler.result(await run_agent(scheduler, agent.host_id, "alice", RATE, agent_image))
    assert isinstance(r.terminal, ExecutionExited), r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out[:2] == ["ok", "ok"]
    assert out[2][0] == "rate_limited"
    assert 0 < out[2][1] <= 1.0
    assert out[3] == "ok after wait"
    outcomes = [(a.outcome, a.detail.split(":")[0]) for a in actions(r.events)]
    assert ("failed", "rate_limited") in outcomes
    assert sum(1 for o in outcomes if o[0] == "allowed") == 4
    # Nothing was dropped: the four messages wait in bob's inbox.
    js = scheduler.nc.jetstream()
    assert (await js.consumer_info(MESSAGES_STREAM, inbox_name("bob"))).num_pending == 4


async def test_a_full_inbox_refuses_more_with_rate_limited(
    agent_image: str, make_store: Any, scheduler: Scheduler, agent_settings: Callable[..., Settings]
) -> None:
    from symbi_common.bus_names import INBOX_DEPTH
    from symbi_sandbox_agent.bus.errors import RateLimited
    from symbi_sandbox_agent.bus.limits import SendLimits
    from symbi_sandbox_agent.bus.runtime import open_carrier

    async with running_agent(embedded(agent_settings)) as agent:
        carrier = await open_carrier(agent.app.state.runtime, SendLimits(1e9, 1e12))
        for start in range(0, INBOX_DEPTH, 100):
            await asyncio.gather(*(carrier.send("dave", "direct", i, to="carol") for i in range(start, start + 100)))
        with pytest.raises(RateLimited) as refused:
            await carrier.send("dave", "direct", "one too many", to="carol")
    assert refused.value.details["retry_after"] > 0
    assert "already holds" in refused.value.message


WAITER = """
import json, time
from symbi_agent import Agent
got, deadline = [], time.time() + 60
with Agent() as a:
    while not got and time.time() < deadline:
        got = a.messages.receive(timeout_s=1)["messages"]
print(json.dumps([[m["from"], m["body"], time.time()] for m in got]))
"""

SEND_ONE = """
from symbi_agent import Agent
with Agent() as a:
    a.messages.send("bob", "while you were away")
print("sent")
"""


async def test_a_message_to_a_suspended_agent_waits_and_is_delivered_on_resume(
    agent_image: str, make_store: Any, scheduler: Scheduler, agent_settings: Callable[..., Settings]
) -> None:
    await policies(make_store)
    js = scheduler.nc.jetstream()
    async with running_agent(embedded(agent_settings)) as agent:
        bob = await run_agent(scheduler, agent.host_id, "bob", WAITER, agent_image)
        await wait_for_inbox(js, "bob")
        await command(agent, "suspend", bob)
        sent = await scheduler.result(await run_agent(scheduler, agent.host_id, "alice", SEND_ONE, agent_image))
        assert isinstance(sent.terminal, ExecutionExited), sent.stderr[-2000:]
        await asyncio.sleep(2)  # bob's pending receive would have had it by now, were it not suspended
        waiting = await js.get_last_msg(MESSAGES_STREAM, direct_subject("bob"))
        assert ENVELOPE_DECODER.decode(waiting.data).meta.sender == "alice"
        resumed_at = time.time()
        await command(agent, "resume", bob)
        r = await scheduler.result(bob, timeout=90)
    assert isinstance(r.terminal, ExecutionExited), r.stderr[-2000:]
    [[sender, body, at]] = json.loads(r.stdout)
    assert (sender, body) == ("alice", "while you were away")
    assert at >= resumed_at - 1.0  # the container's clock is the host's
    received = [a for a in actions(r.events) if a.action == "message.receive"]
    assert len(received) == 1


async def wait_for_inbox(js: Any, agent_id: str, timeout: float = 60.0) -> None:
    """Until the agent's inbox exists and a receive of the agent waits on it (a pull request is pending)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (await js.consumer_info(MESSAGES_STREAM, inbox_name(agent_id))).num_waiting > 0:
                return
        except nats.js.errors.NotFoundError:
            pass
        assert time.monotonic() < deadline, f"no receive of {agent_id} waited on its inbox within {timeout} s"
        await asyncio.sleep(0.05)


async def test_the_daemon_stops_at_once_after_its_agents_waited_on_their_inboxes(
    make_store: Any, agent_settings: Callable[..., Settings]
) -> None:
    """A receive that waited in vain leaves the server's late answer to its pull request (408, request timeout)
    in the inbox's subscription, where nats-py never marks it done: draining that subscription would hold the stop
    for the whole drain timeout (30 s). The daemon gives its inboxes up before it drains, and takes nothing from
    them afterwards."""
    await policies(make_store)
    async with running_agent(embedded(agent_settings)) as agent:
        carrier = await bus_of(agent.app.state.runtime)
        for _ in range(3):  # (each one takes the previous one's late answer from the queue, and leaves its own)
            assert await carrier.fetch("bob", 10, 0.1) == []
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 10.0
    with pytest.raises(BusClosed, match="closed"):
        await carrier.fetch("bob", 10, 0.1)
