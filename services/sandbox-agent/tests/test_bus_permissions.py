"""The bus under the deployment's least-privilege NATS users (symbi_common.natsauth), against a real nats-server.

The sandbox-agent carries messages (direct, topic, request/reply, dead letters, its KV buckets, message data
keys, the max-deliveries advisories) as its own NATS user; the operator lists, replays and tails as ``operator``.
A permission missing from users.conf shows up here as a NATS permissions violation or a timeout.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats
import pytest
from symbi_cli.bus_cmd import BusCommandError, body_opener, dead_letters, replay, tail
from symbi_common.datakeys import open_service_datakeys
from symbi_common.eventstore import EventStore
from symbi_common.keyring import KeyRegistry
from symbi_common.nats_client import server_options, with_credentials
from symbi_common.natsauth import OPERATOR
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings
from symbi_contracts.lifecycle.events import CODEC as AGENT_EVENTS
from symbi_contracts.lifecycle.events import AgentStatus, AgentTerminated
from symbi_fixtures.messaging import DEPLOYMENT_PASSWORDS
from symbi_sandbox_agent.bus.carrier import Carrier
from symbi_sandbox_agent.bus.errors import RecipientTerminated
from symbi_sandbox_agent.bus.runtime import bus_of


async def _no_answer(sender: str, recipient: str, meta: Any) -> str | None:
    return None


async def _serve_one_request(carrier: Carrier, agent_id: str) -> None:
    while True:
        got = await carrier.receive(agent_id, 10, 1.0, _no_answer)
        for m in got:
            if m.meta.kind == "request":
                await carrier.send(agent_id, "reply", {"echo": m.body}, to=m.meta.sender, in_reply_to=m.meta.id)
                return


async def test_the_bus_works_with_the_sandbox_agent_and_operator_users_only(secured_nats: str, keys_dir: Path) -> None:
    url = with_credentials(secured_nats, "sandbox-agent", DEPLOYMENT_PASSWORDS["sandbox-agent"])
    env = {
        "SYMBI_NATS_URL": url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": "warning",
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
    }
    rt = ServiceRuntime("sandbox-agent", load_settings(env=env), use_database=False)
    await rt.start()
    operator_errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        operator_errors.append(exc)

    operator = await nats.connect(
        **server_options(with_credentials(secured_nats, OPERATOR, DEPLOYMENT_PASSWORDS[OPERATOR])),
        error_cb=on_error,
        allow_reconnect=False,
    )
    try:
        carrier = await bus_of(rt)
        await carrier.ensure_inbox("bob", ["news"])
        lines: list[str] = []
        stop = asyncio.Event()
        tailing = asyncio.ensure_future(tail(operator, lines.append, "alice", None, stop))
        await asyncio.sleep(0.3)
        await carrier.send("alice", "direct", {"n": 1}, to="bob")
        await carrier.send("alice", "topic", {"n": 2}, topic="news")
        await carrier.send("alice", "direct", "late", to="bob", ttl_s=1.0)
        await asyncio.sleep(1.2)
        got = await carrier.receive("bob", 10, 2.0, _no_answer)
        assert [m.body for m in got] == [{"n": 1}, {"n": 2}]
        serving = asyncio.ensure_future(_serve_one_request(carrier, "bob"))
        answer = await carrier.request("alice", "bob", {"q": 1}, 10.0)
        await serving
        assert (answer.meta.sender, answer.body) == ("bob", {"echo": {"q": 1}})
        # The operator: dead letters (metadata and reason), a replay, and the live metadata.
        js = operator.jetstream()
        dead = await dead_letters(js, "bob")
        assert [(letter.reason, letter.envelope.meta.sender) for _, letter in dead] == [("expired", "alice")]
        await replay(js, dead[0][0])  # its TTL counts from now
        again = await carrier.receive("bob", 10, 2.0, _no_answer)
        assert [m.body for m in again] == ["late"]
        assert await dead_letters(js, "bob") == []
        stop.set()
        await tailing  # (the tail stops before the connection closes)
        assert len(lines) >= 4
        assert all("alice" in line for line in lines)
        assert not any("echo" in line or "late" in line for line in lines)  # never a body
    finally:
        await operator.close()
        await rt.stop()
    violations = [e for e in [*rt.recent_errors, *map(str, operator_errors)] if "ermission" in str(e)]
    assert violations == []
    assert not operator_errors


async def test_a_message_to_a_terminated_agent_goes_to_the_dead_letters(
    secured_nats: str, keys_dir: Path, signer_for: Any, registry: KeyRegistry
) -> None:
    """The termination is a signed lifecycle event (written as the ``lifecycle`` user); the sandbox-agent
    reads only its authenticated header (it may not decrypt agent events)."""
    lifecycle_nc = await nats.connect(
        **server_options(with_credentials(secured_nats, "lifecycle", DEPLOYMENT_PASSWORDS["lifecycle"])),
        allow_reconnect=False,
    )
    env = {
        "SYMBI_NATS_URL": with_credentials(secured_nats, "sandbox-agent", DEPLOYMENT_PASSWORDS["sandbox-agent"]),
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": "warning",
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
    }
    rt = ServiceRuntime("sandbox-agent", load_settings(env=env), use_database=False)
    await rt.start()
    try:
        datakeys = await open_service_datakeys(lifecycle_nc.jetstream(), keys_dir / "lifecycle", "lifecycle", registry)
        lifecycle = EventStore(
            lifecycle_nc, signer=signer_for("lifecycle"), producer="lifecycle", registry=registry, datakeys=datakeys
        )
        ended = AgentTerminated(reason="retired by the operator", previous=AgentStatus.READY)
        await lifecycle.append("agent", "carol", [ended], AGENT_EVENTS, expected=NEW_AGGREGATE)
        carrier = await bus_of(rt)
        await carrier.send("alice", "direct", "still there?", to="dave")  # a live agent: its inbox
        deadline = asyncio.get_running_loop().time() + 10
        while "carol" not in carrier.terminated:
            assert asyncio.get_running_loop().time() < deadline, "the termination was not followed"
            await asyncio.sleep(0.05)
        with pytest.raises(RecipientTerminated):
            await carrier.send("alice", "direct", "hello carol", to="carol")
        operator = await nats.connect(
            **server_options(with_credentials(secured_nats, OPERATOR, DEPLOYMENT_PASSWORDS[OPERATOR])),
            allow_reconnect=False,
        )
        try:  # (the sandbox-agent only writes dead letters; the operator reads them)
            dead = await dead_letters(operator.jetstream(), "carol")
        finally:
            await operator.close()
        assert [(letter.reason, letter.envelope.meta.sender) for _, letter in dead] == [
            ("recipient_terminated", "alice")
        ]
        assert "dave" not in carrier.terminated
    finally:
        await rt.stop()
        await lifecycle_nc.close()
    assert [e for e in rt.recent_errors if "ermission" in e] == []


async def test_tail_shows_bodies_only_to_an_operator_who_holds_the_keys(secured_nats: str, keys_dir: Path) -> None:
    """``symbi bus tail --decrypt``: as the ``operator`` NATS user, with the audit service's wrap key; without
    it (metadata only) or with a wrap key the message keys are not sealed to, no body."""
    env = {
        "SYMBI_NATS_URL": with_credentials(secured_nats, "sandbox-agent", DEPLOYMENT_PASSWORDS["sandbox-agent"]),
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": "warning",
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
    }
    rt = ServiceRuntime("sandbox-agent", load_settings(env=env), use_database=False)
    await rt.start()
    operator = await nats.connect(
        **server_options(with_credentials(secured_nats, OPERATOR, DEPLOYMENT_PASSWORDS[OPERATOR])),
        allow_reconnect=False,
    )
    try:
        carrier = await bus_of(rt)
        await carrier.ensure_inbox("bob")
        js = operator.jetstream()
        shown: dict[str, list[str]] = {"audit": [], "none": [], "context": []}
        stop = asyncio.Event()
        tails = [
            asyncio.ensure_future(
                tail(operator, shown["audit"].append, "alice", None, stop, await body_opener(js, keys_dir))
            ),
            asyncio.ensure_future(tail(operator, shown["none"].append, "alice", None, stop)),
            asyncio.ensure_future(
                tail(operator, shown["context"].append, "alice", None, stop, await body_opener(js, keys_dir, "context"))
            ),
        ]
        await asyncio.sleep(0.3)
        await carrier.send("alice", "direct", {"secret": "s3"}, to="bob")
        deadline = asyncio.get_running_loop().time() + 10
        while not all(shown.values()):
            assert asyncio.get_running_loop().time() < deadline, f"tail showed too little: {shown}"
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tails)
        assert shown["audit"][0].endswith(' body={"secret":"s3"}')
        assert "s3" not in shown["none"][0]
        assert "body=" not in shown["none"][0]
        assert shown["context"][0].endswith("body=(not decrypted: data_key_not_entitled)")
        with pytest.raises(BusCommandError):  # no keyring there
            await body_opener(js, keys_dir.parent / "nowhere")
    finally:
        await operator.close()
        await rt.stop()
    assert [e for e in rt.recent_errors if "ermission" in e] == []
