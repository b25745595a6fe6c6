"""``symbi up``'s nats-server: one least-privilege user per service, no anonymous access."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from symbi_cli.runtime import LocalRuntime, RuntimeOptions
from symbi_common.streams import provision_streams


@pytest.fixture
async def runtime(runtime_home: Path, free_base_port: int) -> AsyncIterator[LocalRuntime]:
    env = {k: v for k, v in os.environ.items() if k != "SYMBI_DATABASE_URL"}
    rt = LocalRuntime(RuntimeOptions(home=runtime_home, services=[], base_port=free_base_port, nats_port=None, env=env))
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


async def _connect(url: str, errors: list[str]) -> NatsClient:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await nats.connect(url, allow_reconnect=False, connect_timeout=3, error_cb=on_error)


async def _stored(operator: NatsClient, subject: str) -> int:
    info = await operator.jetstream().stream_info("EVENTS", subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def test_anonymous_clients_are_refused(runtime: LocalRuntime) -> None:
    # Spoken in the NATS protocol itself over a socket closed right here: a client library leaves a refused
    # connection's socket to the garbage collector, whose ResourceWarning could surface anywhere later.
    url = runtime.nats_public_url.removeprefix("nats://")
    host, port = url.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        info = await asyncio.wait_for(reader.readline(), 3)
        assert info.startswith(b"INFO ")
        assert b'"auth_required":true' in info
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        await writer.drain()
        reply = await asyncio.wait_for(reader.readline(), 3)
        assert reply.startswith(b"-ERR 'Authorization Violation'"), reply
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_service_may_only_write_its_own_subjects(runtime: LocalRuntime) -> None:
    errors: list[str] = []
    operator = await _connect(runtime.nats_url, errors)
    lifecycle = await _connect(runtime.nats_url_for("lifecycle"), errors)
    try:
        await provision_streams(lifecycle.jetstream())  # services may manage streams through the JS API
        ack = await lifecycle.request("evt.agent.a1", b"own subject", timeout=3)
        assert b'"seq"' in ack.data

        with pytest.raises(nats.errors.TimeoutError):  # the server drops it: no stream ever sees it
            await lifecycle.request("evt.policy.p1", b"forged", timeout=1)
        with pytest.raises(nats.errors.TimeoutError):
            await operator.request("evt.agent.a2", b"operators cannot write events", timeout=1)
        await asyncio.sleep(0.1)
        assert any("permissions violation" in e.lower() and "evt.policy.p1" in e for e in errors), errors
        assert await _stored(operator, "evt.policy.>") == 0
        assert await _stored(operator, "evt.agent.a2") == 0
        assert await _stored(operator, "evt.agent.a1") == 1

        # Nor may it listen to another service's commands.
        sub = await lifecycle.subscribe("cmd.policy.*")
        await asyncio.sleep(0.2)
        assert any("cmd.policy.*" in e for e in errors), errors
        await sub.unsubscribe()
    finally:
        await lifecycle.close()
        await operator.close()
