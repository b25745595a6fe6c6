"""The ``[mcp]`` settings, honoured by the host's tool service: switched off, a connection cap, a start timeout.

Real MCP servers (the toolbox, as child processes) and the real signed event store.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from symbi_common.eventstore import EventStore
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings
from symbi_contracts.tools.errors import ToolsDisabled, ToolServerUnavailable
from symbi_contracts.tools.events import ToolServerRegistered
from symbi_sandbox_agent.tools.limits import ToolLimits
from symbi_sandbox_agent.tools.service import ToolService
from symbi_sandbox_agent.tools.stored_registry import StoredRegistry
from symbi_sandbox_agent.tools.wiring import tool_service

from .tools_support import bundle, keypair, local_server

_, PUBLIC = keypair()


@pytest.fixture
async def store(make_store: Callable[..., Awaitable[EventStore]]) -> EventStore:
    return await make_store("sandbox-agent")


def _service(store: EventStore, **settings: str) -> ToolService:
    """The tool service the host builds (tools.wiring) from settings given as ``SYMBI_*`` variables."""
    runtime: Any = type("Runtime", (), {"store": store, "settings": load_settings(env=settings)})()
    s = runtime.settings
    return tool_service(cast(ServiceRuntime, runtime), s.sandbox, s.mcp)


async def test_switched_off_no_server_is_registered_started_listed_or_called(store: EventStore) -> None:
    tools = _service(store, MCP_SERVER_DISCOVERY="false")
    try:
        with pytest.raises(ToolsDisabled, match=r"switched off on this host \(\[mcp\] discovery_enabled = false\)"):
            await tools.register(local_server("toolbox"))
        assert (await tools.registry.state("toolbox", fresh=True)).registration is None  # nothing recorded
        with pytest.raises(ToolsDisabled):
            await tools.list()
        with pytest.raises(ToolsDisabled):
            await tools.callable_record("toolbox.add")
        with pytest.raises(ToolsDisabled):
            await tools.call("toolbox.add", {"a": 1, "b": 2})
        assert tools.connections == {}
    finally:
        await tools.close()


async def test_one_connection_more_than_the_cap_is_refused_before_it_is_recorded(store: EventStore) -> None:
    tools = _service(store, SYMBI_MCP__MAX_CONCURRENT_CONNECTIONS="1")
    tools.local = True  # the toolbox as a child process, not a sandbox container
    try:
        await tools.register(local_server("first"))
        with pytest.raises(ToolServerUnavailable, match=r"1 servers are, the most \[mcp\] max_concurrent_connections"):
            await tools.register(local_server("second"))
        assert (await tools.registry.state("second", fresh=True)).registration is None
        assert sorted(tools.connections) == ["first"]
        await tools.register(local_server("first"))  # the same server again takes no second connection
    finally:
        await tools.close()


async def test_a_server_that_never_answers_initialize_fails_at_the_connection_timeout(store: EventStore) -> None:
    limits = ToolLimits(connect_timeout_s=0.5)
    tools = ToolService(StoredRegistry(store), bundle(PUBLIC), limits=limits, local=True)
    silent = ToolServerRegistered(
        server="silent", transport="stdio", command=(sys.executable, "-c", "import time; time.sleep(30)")
    )
    try:
        with pytest.raises(ToolServerUnavailable, match=r"'silent' did not start in 0.5 s"):
            await tools.register(silent)
        assert tools.connections == {}
    finally:
        await tools.close()


def test_the_connection_settings_reach_the_tool_limits() -> None:
    s = load_settings(env={"SYMBI_MCP__CONNECTION_TIMEOUT_S": "7.5", "SYMBI_MCP__MAX_CONCURRENT_CONNECTIONS": "3"})
    assert (s.mcp.connection_timeout_s, s.mcp.max_concurrent_connections, s.mcp.discovery_enabled) == (7.5, 3, True)
