"""A streamable-HTTP tool server's URL under the egress address rules: a real MCP server on loopback
(tests/mcp_servers/toolbox.py), refused unless ``[egress] allow_addresses`` names its address, at
registration and again at every connection (a name that resolves elsewhere the second time is refused)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest
from symbi_common.eventstore import EventStore
from symbi_contracts.tools.errors import ToolRefused, ToolServerUnavailable
from symbi_contracts.tools.events import CODEC, ToolServerRegistered
from symbi_fixtures.runtimes import take_free_port
from symbi_sandbox_agent.egress.addresses import Address, AddressPolicy
from symbi_sandbox_agent.egress.resolver import StaticResolver
from symbi_sandbox_agent.tools.service import ToolService
from symbi_sandbox_agent.tools.stored_registry import StoredRegistry
from symbi_sandbox_agent.tools.url_egress import UrlEgress

from .tools_support import DOMAIN, TOOLBOX, bundle, keypair

KEY, PUBLIC = keypair()


class Rebinding:
    """A name whose first answer is one address and every later answer another (DNS rebinding)."""

    def __init__(self, first: str, then: str) -> None:
        self.answers = [StaticResolver({"tools.test": first}), StaticResolver({"tools.test": then})]
        self.calls = 0

    async def resolve(self, host: str, port: int) -> list[Address]:
        self.calls += 1
        return await self.answers[min(self.calls, 2) - 1].resolve(host, port)


@pytest.fixture
async def toolbox() -> AsyncIterator[int]:
    port = take_free_port()
    env = {**os.environ, "TOOLBOX_HTTP_PORT": str(port), "TOOLBOX_SIGNING_KEY": KEY}
    proc = await asyncio.create_subprocess_exec(sys.executable, str(TOOLBOX), env=env, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


@pytest.fixture
async def store(make_store: Callable[..., Awaitable[EventStore]]) -> EventStore:
    return await make_store("sandbox-agent")


async def _service(store: EventStore, egress: UrlEgress) -> ToolService:
    return ToolService(StoredRegistry(store), bundle(PUBLIC), egress=egress)


async def test_loopback_is_refused_unless_allowed(store: EventStore, toolbox: int) -> None:
    reg = ToolServerRegistered(server="web", transport="http", url=f"http://127.0.0.1:{toolbox}/mcp", domain=DOMAIN)
    refused = await _service(store, UrlEgress())
    with pytest.raises(ToolRefused, match=r"127\.0\.0\.1 \(loopback\).*allow_addresses"):
        await refused.register(reg)
    assert await store.load("toolserver", "web", CODEC) == []  # nothing recorded
    named = msgspec.structs.replace(reg, url=f"http://tools.test:{toolbox}/mcp")
    private = await _service(store, UrlEgress(resolver=StaticResolver({"tools.test": "10.1.2.3"})))
    with pytest.raises(ToolRefused, match=r"10\.1\.2\.3 \(private\)"):
        await private.register(named)
    allowed = await _service(store, UrlEgress(AddressPolicy.parse(["127.0.0.1/32"])))
    try:
        state = await allowed.register(reg)
        assert state.tools["add"].verification == "verified"
        await allowed.approve("web.add")
        assert (await allowed.call("web.add", {"a": 2, "b": 2})).result["structuredContent"] == {"result": 4}
    finally:
        await allowed.close()


async def test_a_name_that_rebinds_after_the_check_is_not_connected(store: EventStore, toolbox: int) -> None:
    resolver = Rebinding("127.0.0.1", "127.0.0.2")
    tools = await _service(store, UrlEgress(AddressPolicy.parse(["127.0.0.1/32"]), resolver))
    reg = ToolServerRegistered(server="rebind", transport="http", url=f"http://tools.test:{toolbox}/mcp")
    try:
        with pytest.raises(ToolServerUnavailable, match="could not be started") as failed:
            await tools.register(reg)
        assert "127.0.0.2 (loopback)" in str(failed.value)
        assert resolver.calls >= 2  # checked at registration, then again for the connection (refused)
        assert "rebind" not in tools.connections
    finally:
        await tools.close()
