"""A delivery that cannot be decided waits in the inbox: never refused, never dead-lettered for it (real
nats-server, the carrier of a running sandbox-agent runtime)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings
from symbi_contracts.bus import DEADLETTER_STREAM, Meta, dead_subject
from symbi_sandbox_agent.bus import carrier as carrier_module
from symbi_sandbox_agent.bus.carrier import Carrier
from symbi_sandbox_agent.bus.errors import Undecided
from symbi_sandbox_agent.bus.limits import SendLimits
from symbi_sandbox_agent.bus.runtime import open_carrier


@pytest.fixture
async def carrier(nats_url: str, keys_dir: Path, provisioned: NatsClient) -> AsyncIterator[Carrier]:
    env = {"SYMBI_NATS_URL": nats_url, "SYMBI_KEYS_DIR": str(keys_dir), "SYMBI_POLICY__ENFORCEMENT": "allow-all"}
    rt = ServiceRuntime("sandbox-agent", load_settings(env=env), use_database=False)
    await rt.start()
    try:
        yield await open_carrier(rt, SendLimits(1e6, 1e9))
    finally:
        await rt.stop()


async def test_a_topic_message_whose_delivery_is_undecided_is_delivered_once_it_is(
    carrier: Carrier, provisioned: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a delivery decision that timed out (or a policy point away) dead-lettered the message as refused."""
    monkeypatch.setattr(carrier_module, "UNDECIDED_RETRY_S", 0.2)
    await carrier.ensure_inbox("bob", ["news"])
    sent = await carrier.send("alice", "topic", {"n": 1}, topic="news")

    async def undecided(sender: str, recipient: str, meta: Meta) -> str | None:
        raise Undecided(f"no decision on delivering message {meta.id}: policy_timeout")

    async def allowed(sender: str, recipient: str, meta: Meta) -> str | None:
        return None

    batch = await carrier.take("bob", await carrier.fetch("bob", 10, 2.0), undecided)
    assert (batch.delivered, batch.undecided) == ([], 1)
    got: list[Any] = []
    for _ in range(50):  # handed back with a delay: delivered again once it is over
        got = await carrier.receive("bob", 10, 0.5, allowed)
        if got:
            break
        await asyncio.sleep(0.1)
    assert [d.meta.id for d in got] == [sent.id]
    try:  # and nothing of it went to the dead letters
        last = await provisioned.jetstream().get_last_msg(DEADLETTER_STREAM, dead_subject("bob"))
    except nats.js.errors.NotFoundError:
        return
    assert sent.id.encode() not in (last.data or b"")
