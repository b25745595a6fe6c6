"""MCP tools against real MCP servers (the ``mcp`` SDK's, tests/mcp_servers/toolbox.py) and the real signed
event store: signed tools listed, approved and called; rug pull; forged signature; revoked key; unknown
domain; collision; poisoning; timeout; oversized result; a streamable-HTTP server; a server in a container."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from symbi_common.eventstore import EventStore
from symbi_contracts.tools.errors import (
    ToolNotApproved,
    ToolRefused,
    ToolResultTooLarge,
    ToolTimeout,
    ToolVerificationFailed,
    UnknownTool,
)
from symbi_contracts.tools.events import (
    CODEC,
    ToolDefinitionChanged,
    ToolKeyPinned,
    ToolListingRefused,
    ToolServerEvent,
    ToolServerRegistered,
)
from symbi_fixtures.runtimes import take_free_port
from symbi_sandbox_agent.egress.addresses import AddressPolicy
from symbi_sandbox_agent.tools.limits import ToolLimits
from symbi_sandbox_agent.tools.service import ToolService
from symbi_sandbox_agent.tools.stored_registry import StoredRegistry
from symbi_sandbox_agent.tools.url_egress import UrlEgress

from .tools_support import DOMAIN, TOOLBOX, bundle, keypair, local_server

KEY, PUBLIC = keypair()
LOOPBACK = UrlEgress(AddressPolicy.parse(["127.0.0.0/8"]))


@pytest.fixture
async def store(make_store: Callable[..., Awaitable[EventStore]]) -> EventStore:
    return await make_store("sandbox-agent")


@pytest.fixture
async def tools(store: EventStore) -> AsyncIterator[ToolService]:
    service = ToolService(
        StoredRegistry(store),
        bundle(PUBLIC),
        limits=ToolLimits(timeout_s=2.0, max_result_bytes=10_000),
        local=True,
        egress=LOOPBACK,  # the streamable-HTTP test server listens on 127.0.0.1
    )
    yield service
    await service.close()


async def history(store: EventStore, server: str) -> list[ToolServerEvent]:
    return [r.event for r in await store.load("toolserver", server, CODEC)]


async def test_signed_tool_is_listed_approved_and_called(tools: ToolService, store: EventStore) -> None:
    state = await tools.register(local_server("math", TOOLBOX_SIGNING_KEY=KEY))
    add = state.tools["add"]
    assert (add.status, add.verification, add.flags) == ("pending", "verified", ())
    assert add.seen_pin.startswith("sha256:")
    assert state.key_fingerprint == add.key_fingerprint != ""
    with pytest.raises(ToolNotApproved, match="not approved it yet"):
        await tools.callable_record("math.add")
    with pytest.raises(ToolRefused, match="approve that pin"):
        await tools.approve("math.add", pin="sha256:" + "0" * 64)
    await tools.approve("math.add", pin=add.seen_pin, by="op")
    record = await tools.callable_record("math.add")
    assert record.approved_pin == add.seen_pin
    called = await tools.call("math.add", {"a": 2, "b": 3})
    assert called.result["structuredContent"] == {"result": 5}
    assert called.digest.startswith("sha256:")
    listed = {t.name: t for t in await tools.list()}
    assert listed["math.add"].status == "approved"
    assert listed["math.echo"].status == "pending"
    events = await history(store, "math")
    assert isinstance(events[0], ToolServerRegistered)
    assert sum(isinstance(e, ToolKeyPinned) for e in events) == 1
    # Listing the same definitions again records nothing new.
    assert len(await history(store, "math")) == len(events)


async def test_rug_pull_blocks_the_tool_until_reapproved(tools: ToolService, store: EventStore) -> None:
    await tools.register(local_server("rug", TOOLBOX_SIGNING_KEY=KEY))
    await tools.approve("rug.echo")
    await tools.approve("rug.mutate")
    assert (await tools.call("rug.echo", {"text": "hi"})).result["structuredContent"] == {"result": "hi"}
    await tools.call("rug.mutate", {})  # the server changes echo's description and says the list changed
    for _ in range(50):
        if tools.connections["rug"].changed.is_set():
            break
        await asyncio.sleep(0.05)
    with pytest.raises(ToolNotApproved, match="definition changed") as caught:
        await tools.callable_record("rug.echo")
    assert caught.value.details["status"] == "blocked"
    changed = [e for e in await history(store, "rug") if isinstance(e, ToolDefinitionChanged)]
    assert [e.tool for e in changed] == ["echo"]
    state = await tools.registry.state("rug", fresh=True)
    assert "instruction_like" in state.tools["echo"].flags
    assert state.tools["echo"].verification == "verified"  # re-signed by the same key: still a rug pull
    await tools.approve("rug.echo", pin=state.tools["echo"].seen_pin)
    assert (await tools.callable_record("rug.echo")).status == "approved"


@pytest.mark.parametrize(
    ("server", "trust", "outcome"),
    [
        (local_server("forged", TOOLBOX_SIGNING_KEY=KEY, TOOLBOX_FORGE="1"), bundle(PUBLIC), "signature_invalid"),
        (local_server("revoked", TOOLBOX_SIGNING_KEY=KEY), bundle(PUBLIC, revoked=True), "key_revoked"),
        (local_server("elsewhere", "unknown.example", TOOLBOX_SIGNING_KEY=KEY), bundle(PUBLIC), "unknown_domain"),
        (local_server("unsigned"), bundle(PUBLIC), "signature_missing"),
    ],
)
async def test_failed_verification_is_never_callable_nor_pins_a_key(
    store: EventStore, server: ToolServerRegistered, trust: Any, outcome: str
) -> None:
    tools = ToolService(StoredRegistry(store), trust, local=True)
    try:
        state = await tools.register(server)
        assert {t.verification for t in state.tools.values()} == {outcome}
        assert state.key_fingerprint == ""
        assert not any(isinstance(e, ToolKeyPinned) for e in await history(store, server.server))
        with pytest.raises(ToolRefused, match="failed SchemaPin verification"):
            await tools.approve(f"{server.server}.add")
        with pytest.raises(ToolVerificationFailed, match=outcome):
            await tools.callable_record(f"{server.server}.add")
    finally:
        await tools.close()


async def test_a_server_without_a_domain_is_unsigned_and_may_be_approved(tools: ToolService) -> None:
    state = await tools.register(local_server("plain", domain=""))
    assert state.tools["add"].verification == "unsigned"
    await tools.approve("plain.add")
    assert (await tools.call("plain.add", {"a": 1, "b": 1})).result["structuredContent"] == {"result": 2}


async def test_collisions_are_refused(tools: ToolService, store: EventStore) -> None:
    with pytest.raises(ToolRefused, match="collide"):
        await tools.register(local_server("dup", TOOLBOX_SIGNING_KEY=KEY, TOOLBOX_COLLIDE="1"))
    refused = [e for e in await history(store, "dup") if isinstance(e, ToolListingRefused)]
    assert len(refused) == 1
    assert "'add' and 'Add'" in refused[0].reason
    with pytest.raises(UnknownTool):
        await tools.callable_record("dup.add")
    await tools.register(local_server("one", TOOLBOX_SIGNING_KEY=KEY))
    with pytest.raises(ToolRefused, match="is not pinned by digest"):
        await ToolService(tools.registry, tools.bundle).register(
            ToolServerRegistered(server="img", transport="stdio", image="python:3.11", command=("python",))
        )


async def test_poisoned_description_is_flagged(tools: ToolService) -> None:
    await tools.register(local_server("other", TOOLBOX_SIGNING_KEY=KEY))
    state = await tools.register(local_server("bad", TOOLBOX_SIGNING_KEY=KEY, TOOLBOX_POISON="1"))
    assert "instruction_like" in state.tools["poisoned"].flags
    assert state.tools["add"].flags == ("same_name_as:other.add",)
    listed = {t.name: t for t in await tools.list()}
    assert "instruction_like" in listed["bad.poisoned"].flags


async def test_hanging_tool_times_out_and_the_session_goes_on(tools: ToolService) -> None:
    await tools.register(local_server("slow", TOOLBOX_SIGNING_KEY=KEY))
    await tools.approve("slow.sleep")
    await tools.approve("slow.add")
    with pytest.raises(ToolTimeout, match="did not answer in 2 s"):
        await tools.call("slow.sleep", {"seconds": 30})
    assert (await tools.call("slow.add", {"a": 1, "b": 2})).result["structuredContent"] == {"result": 3}


async def test_oversized_result_is_dropped(tools: ToolService) -> None:
    await tools.register(local_server("big", TOOLBOX_SIGNING_KEY=KEY))
    await tools.approve("big.big")
    assert (await tools.call("big.big", {"n": 100})).size < 10_000
    with pytest.raises(ToolResultTooLarge, match="at most 10000"):
        await tools.call("big.big", {"n": 20_000})


async def test_streamable_http_server(tools: ToolService) -> None:
    port = take_free_port()
    env = {**os.environ, "TOOLBOX_HTTP_PORT": str(port), "TOOLBOX_SIGNING_KEY": KEY}
    proc = await asyncio.create_subprocess_exec(sys.executable, str(TOOLBOX), env=env, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.1)
        url = f"http://127.0.0.1:{port}/mcp"
        state = await tools.register(ToolServerRegistered(server="web", transport="http", url=url, domain=DOMAIN))
        assert state.tools["add"].verification == "verified"
        await tools.approve("web.add")
        assert (await tools.call("web.add", {"a": 20, "b": 22})).result["structuredContent"] == {"result": 42}
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def test_another_daemon_sees_a_removal_and_a_new_registration(tools: ToolService, store: EventStore) -> None:
    """Two daemons share the registry: what one removes or registers anew, the other follows within its
    registry's max age (its connection dropped, or made again for the new registration)."""
    other = ToolService(StoredRegistry(store, max_age_s=0.2), bundle(PUBLIC), local=True)
    try:
        await tools.register(local_server("shared", TOOLBOX_SIGNING_KEY=KEY))
        await tools.approve("shared.add")
        await other.attach("shared")
        assert (await other.callable_record("shared.add")).status == "approved"
        await tools.remove("shared", by="op")
        await asyncio.sleep(0.3)
        with pytest.raises(UnknownTool, match="was removed"):
            await other.callable_record("shared.add")
        assert "shared" not in other.connections
        assert not [t for t in await other.list() if t.server == "shared"]

        await tools.register(local_server("shared", TOOLBOX_SIGNING_KEY=KEY))
        await other.attach("shared")
        first = other.connections["shared"]
        await tools.remove("shared", by="op")
        await tools.register(local_server("shared", TOOLBOX_SIGNING_KEY=KEY, TOOLBOX_POISON="1"))
        listed = {t.name: t.status for t in await other.list() if t.server == "shared"}
        assert listed["shared.poisoned"] == "pending"  # what the new registration's server lists
        assert listed["shared.add"] == "pending"  # the approval went with the removal
        assert other.connections["shared"] is not first
    finally:
        await other.close()
