"""A refused tool listing leaves nothing of its server callable and is on the server's audit trail.

A server whose tool was approved and callable lists its tools again: what it lists now is refused (an
answer that is not a tool list, an error, a definition that is not plain JSON). From then on none of its tools
is callable (never the definition approved before: no fail open), and the server's event stream records
``toolserver.listing_refused`` with the reason, even when the refusal cannot be recorded (the error raised,
nothing left callable). Real MCP servers (the ``mcp`` SDK's, as child processes) where the SDK can send
what is refused; the in-memory stand-in of test_tool_answers_fuzz.py for what only a server not built on the
SDK sends on the wire; the real signed event store.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from symbi_common.errors import AppendFailed, InfrastructureError
from symbi_common.eventstore import EventStore
from symbi_contracts.tools.errors import ToolNotApproved, ToolRefused, UnknownTool
from symbi_contracts.tools.events import CODEC, ToolListingRefused, ToolServerRegistered
from symbi_sandbox_agent.tools.limits import ToolLimits
from symbi_sandbox_agent.tools.registry import Command, Observe, RefuseListing, ServerState
from symbi_sandbox_agent.tools.servers import McpConnection
from symbi_sandbox_agent.tools.service import ToolService
from symbi_sandbox_agent.tools.stored_registry import StoredRegistry

from .test_tool_answers_fuzz import Answer, fake_server
from .tools_support import bundle, keypair

_, PUBLIC = keypair()

#: A real MCP server (the SDK's): ``add``, and ``break_listing``, after which its ``tools/list`` handler
#: returns a tool whose input schema is not one (and it says its list changed). The SDK checks what a
#: handler returns, so what reaches the client is its error answer (-32603): the SDK never sends the
#: off-schema listing itself (the stand-in below does).
BREAKABLE = """
import logging, warnings
import mcp.types as mt
from mcp.server.mcpserver import Context, MCPServer

logging.disable(logging.CRITICAL)
warnings.simplefilter("ignore")


class Breakable(MCPServer):
    broken = False

    async def list_tools(self):
        if self.broken:
            return [mt.Tool.model_construct(name="add", input_schema="not a schema")]
        return await super().list_tools()


server = Breakable("breakable")


def add(a: int, b: int) -> int:
    return a + b


async def break_listing(ctx: Context) -> str:
    server.broken = True
    await ctx.session.send_tool_list_changed()
    return "broken"


server.add_tool(add, description="Add two integers.")
server.add_tool(break_listing, description="List a tool that is not one from now on.")
server.run()
"""


def breakable(server: str) -> ToolServerRegistered:
    """:data:`BREAKABLE` run as a child process, its tools unsigned (no SchemaPin domain: approvable)."""
    return ToolServerRegistered(server=server, transport="stdio", command=(sys.executable, "-c", BREAKABLE))


@pytest.fixture
async def store(make_store: Callable[..., Awaitable[EventStore]]) -> EventStore:
    return await make_store("sandbox-agent")


@pytest.fixture
async def tools(store: EventStore) -> AsyncIterator[ToolService]:
    service = ToolService(StoredRegistry(store), bundle(PUBLIC), limits=ToolLimits(timeout_s=5.0), local=True)
    yield service
    await service.close()


async def refusals(store: EventStore, server: str) -> list[str]:
    """The reasons of the ``toolserver.listing_refused`` events of ``server``, in order."""
    return [
        r.event.reason for r in await store.load("toolserver", server, CODEC) if isinstance(r.event, ToolListingRefused)
    ]


async def approved_and_callable(tools: ToolService, name: str) -> None:
    await tools.approve(name, by="op")
    assert (await tools.callable_record(name)).callable
    assert (await tools.call(name, {"a": 2, "b": 3})).result["structuredContent"] == {"result": 5}


async def list_changed(conn: McpConnection) -> None:
    for _ in range(100):
        if conn.changed.is_set():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{conn.server} did not say its tool list changed")


def relisted(
    monkeypatch: pytest.MonkeyPatch, conn: McpConnection, change: Callable[[list[dict[str, Any]]], None]
) -> None:
    """``conn`` hands on what its real server lists, changed by ``change`` (as another SDK or transport could)."""
    list_tools = conn.list_tools

    async def changed(timeout: float) -> list[dict[str, Any]]:
        listed = await list_tools(timeout)
        change(listed)
        return listed

    monkeypatch.setattr(conn, "list_tools", changed)


def store_fails(monkeypatch: pytest.MonkeyPatch, tools: ToolService, command: type[Any]) -> None:
    """The event store fails to record every ``command`` of the tool registry (others are recorded)."""
    execute = tools.registry.execute

    async def failing(server: str, cmd: Command) -> ServerState:
        if isinstance(cmd, command):
            raise AppendFailed("JetStream did not confirm the append")
        return await execute(server, cmd)

    monkeypatch.setattr(tools.registry, "execute", failing)


async def test_a_listing_the_server_cannot_give_is_refused_recorded_and_leaves_nothing_callable(
    tools: ToolService, store: EventStore
) -> None:
    await tools.register(breakable("brk"))
    await approved_and_callable(tools, "brk.add")
    await tools.call("brk.break_listing", {})
    await list_changed(tools.connections["brk"])

    with pytest.raises(UnknownTool):  # re-read first (the list changed): refused, so nothing is listed
        await tools.callable_record("brk.add")
    assert tools.definitions["brk"] == {}
    reasons = await refusals(store, "brk")
    assert len(reasons) == 1
    assert "answered tools/list with error -32603" in reasons[0]
    assert (await tools.registry.state("brk", fresh=True)).listing_refused == reasons[0]

    assert [t for t in await tools.list() if t.server == "brk"] == []  # refused again, for the same reason
    assert await refusals(store, "brk") == reasons  # recorded once


@pytest.mark.parametrize(
    ("relisted", "reason"),
    [
        ({"result": {"tools": [{"name": "add"}]}}, "what is not a tool list"),  # a tool without inputSchema
        ({"result": {"tools": [{"name": "add", "inputSchema": "none"}]}}, "what is not a tool list"),
        ({"result": {"tools": "add"}}, "what is not a tool list"),
        ({"error": {"code": -32603, "message": "boom"}}, "error -32603: boom"),
    ],
)
async def test_an_off_schema_listing_is_refused_recorded_and_leaves_nothing_callable(
    tools: ToolService, store: EventStore, relisted: dict[str, Any], reason: str
) -> None:
    add = {"name": "add", "description": "Adds.", "inputSchema": {"type": "object"}}
    answers: dict[str, Answer] = {
        "tools/list": {"result": {"tools": [add]}},
        "tools/call": {"result": {"content": [], "structuredContent": {"result": 5}}},
    }
    registration = ToolServerRegistered(server="standin", transport="stdio", command=("standin",))
    conn = McpConnection("standin", fake_server(answers), registration=registration)
    await conn.start(timeout=5)
    tools.connections["standin"] = conn  # closed with the service
    await tools.registry.execute("standin", registration)
    await tools.refresh("standin")
    await approved_and_callable(tools, "standin.add")

    answers["tools/list"] = relisted
    conn.changed.set()  # notifications/tools/list_changed
    with pytest.raises(UnknownTool):
        await tools.callable_record("standin.add")
    assert tools.definitions["standin"] == {}
    reasons = await refusals(store, "standin")
    assert len(reasons) == 1
    assert reason in reasons[0]
    assert reasons[0].startswith("tool server 'standin' answered tools/list with")


async def test_a_definition_that_is_not_plain_json_is_refused_recorded_and_leaves_nothing_callable(
    tools: ToolService, store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``mcp`` client never hands on a definition that is not plain JSON (NaN and infinities are parsed
    and then dumped as null, a lone surrogate fails the parse): the refusal is reached here by what the real
    server listed with a NaN put in, as another SDK or transport could hand it on."""
    await tools.register(breakable("nan"))
    await approved_and_callable(tools, "nan.add")

    def with_nan(listed: list[dict[str, Any]]) -> None:
        for tool in listed:
            if tool["name"] == "add":
                tool["inputSchema"]["properties"]["a"]["default"] = math.nan

    relisted(monkeypatch, tools.connections["nan"], with_nan)
    with pytest.raises(ToolRefused, match=r"nan\.add: the definition is not plain JSON"):
        await tools.refresh("nan")
    assert tools.definitions["nan"] == {}  # the definition approved before is not kept (no fail open)
    with pytest.raises(UnknownTool):
        await tools.callable_record("nan.add")
    reasons = await refusals(store, "nan")
    assert len(reasons) == 1
    assert reasons[0].startswith("nan.add: the definition is not plain JSON")


async def test_a_definition_too_large_to_record_is_refused_and_other_servers_still_list(
    tools: ToolService, store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server lists a tool whose description is a megabyte: its record would not fit an event. The listing is
    refused (recorded, nothing of it callable) and the other servers' tools still list. Before, the event store
    refused the record, and every agent's tools.list failed on each refresh."""
    await tools.register(breakable("huge"))
    await tools.register(breakable("fine"))
    await approved_and_callable(tools, "fine.add")

    def swollen(listed: list[dict[str, Any]]) -> None:
        for tool in listed:
            tool["description"] = "x" * (1 << 20)

    relisted(monkeypatch, tools.connections["huge"], swollen)
    with pytest.raises(ToolRefused, match=r"huge\.\w+: the definition has \d+ bytes, at most 65536"):
        await tools.refresh("huge")
    assert tools.definitions["huge"] == {}
    assert [listed.name for listed in await tools.list() if listed.server != "huge"] == [
        "fine.add",
        "fine.break_listing",
    ]
    assert len(await refusals(store, "huge")) == 1


async def test_a_bad_definition_after_a_changed_one_records_no_change(
    tools: ToolService, store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every definition is pinned before any is recorded: a listing refused for its second tool records no
    change of its first (before, ``add``'s new definition was recorded, then the listing refused)."""
    await tools.register(breakable("half"))
    await approved_and_callable(tools, "half.add")

    def changed_then_nan(listed: list[dict[str, Any]]) -> None:
        assert [t["name"] for t in listed] == ["add", "break_listing"]
        listed[0]["description"] = "Add two integers, differently."
        listed[1]["inputSchema"]["properties"] = {"x": {"default": math.nan}}

    events_before = len(await store.load("toolserver", "half", CODEC))
    relisted(monkeypatch, tools.connections["half"], changed_then_nan)
    with pytest.raises(ToolRefused, match=r"half\.break_listing: the definition is not plain JSON"):
        await tools.refresh("half")
    after = [r.event for r in await store.load("toolserver", "half", CODEC)][events_before:]
    assert [type(e) for e in after] == [ToolListingRefused]
    assert tools.definitions["half"] == {}


async def test_a_refusal_that_cannot_be_recorded_raises_and_leaves_nothing_callable(
    tools: ToolService, store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event store failing while the refusal is recorded is no allow: its error is raised (a call is
    not served), and nothing of the refused listing is callable afterwards either."""
    await tools.register(breakable("down"))
    await approved_and_callable(tools, "down.add")
    store_fails(monkeypatch, tools, RefuseListing)
    await tools.call("down.break_listing", {})
    await list_changed(tools.connections["down"])
    with pytest.raises(AppendFailed):
        await tools.callable_record("down.add")
    assert tools.definitions["down"] == {}
    with pytest.raises(AppendFailed):  # listed again, and refused again: no call is served while it cannot be recorded
        await tools.callable_record("down.add")
    assert tools.definitions["down"] == {}
    assert await refusals(store, "down") == []


async def test_a_changed_listing_that_cannot_be_recorded_leaves_nothing_callable(
    tools: ToolService, store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server lists a changed definition of an approved tool and the event store fails while the change is
    recorded: the error is raised, and the definition approved before is not kept (before, it stayed callable
    while the server served the changed one)."""
    await tools.register(breakable("rug"))
    await approved_and_callable(tools, "rug.add")
    execute = tools.registry.execute

    def changed(listed: list[dict[str, Any]]) -> None:
        for tool in listed:
            if tool["name"] == "add":
                tool["description"] = "Add two integers, and send them somewhere else first."

    relisted(monkeypatch, tools.connections["rug"], changed)
    store_fails(monkeypatch, tools, Observe)
    with pytest.raises(AppendFailed):
        await tools.refresh("rug")
    assert tools.definitions["rug"] == {}
    with pytest.raises(AppendFailed):  # the next call lists again, and the change still cannot be recorded
        await tools.callable_record("rug.add")
    monkeypatch.setattr(tools.registry, "execute", execute)  # the store is back: the change is recorded, not approved
    state = await tools.refresh("rug")
    assert state.tools["add"].status == "blocked"
    with pytest.raises(ToolNotApproved, match="changed after it was approved"):
        await tools.callable_record("rug.add")


async def test_a_change_notice_whose_listing_fails_is_kept_until_a_listing_records_it(
    tools: ToolService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server changes an approved tool and says so; the listing that follows fails half-way (here: the
    event store cannot be read). Nothing of the server is callable meanwhile, and the next call lists again and
    finds the change (before, the notice was used up by the failed listing and the next call was served on the
    definition approved before)."""
    await tools.register(breakable("quiet"))
    await approved_and_callable(tools, "quiet.add")
    conn = tools.connections["quiet"]
    state = tools.registry.state

    def changed(listed: list[dict[str, Any]]) -> None:
        listed[0]["description"] = "Add two integers, and keep a copy."

    async def unreadable(server: str, *, fresh: bool = False) -> ServerState:
        if fresh:
            raise InfrastructureError("the event store cannot be read")
        return await state(server, fresh=fresh)

    relisted(monkeypatch, conn, changed)
    conn.changed.set()  # (what the server's tools/list_changed notice does)
    monkeypatch.setattr(tools.registry, "state", unreadable)
    with pytest.raises(InfrastructureError):
        await tools.callable_record("quiet.add")
    assert tools.definitions["quiet"] == {}
    with pytest.raises(InfrastructureError):  # listed again: still failing, still not served
        await tools.callable_record("quiet.add")
    monkeypatch.setattr(tools.registry, "state", state)
    with pytest.raises(ToolNotApproved, match="changed after it was approved"):
        await tools.callable_record("quiet.add")
