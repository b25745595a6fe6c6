"""A streamable-HTTP tool server's answers are bounded as the stdio transport's lines are: a message of more than
:data:`MAX_LINE_BYTES` fails the listing or call it answers with a typed error naming the server and the limit,
no part of it passed on, and the daemon stops reading it there instead of holding all of it.

Real HTTP servers on loopback, run by uvicorn in this process: the SDK's own MCP server (its JSON and its
event-stream answers), and a hostile one speaking just enough of the protocol, whose answers never end (a JSON
body, an event's data line) and which counts the bytes it got to send before the client hung up. The client is
the daemon's: :func:`transport_for` under the egress rules, :class:`McpConnection`, :class:`ToolService`.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from symbi_contracts.tools.errors import ToolRefused, ToolResultTooLarge
from symbi_contracts.tools.events import ToolServerRegistered
from symbi_sandbox_agent.egress.addresses import AddressPolicy
from symbi_sandbox_agent.tools.servers import McpConnection, transport_for
from symbi_sandbox_agent.tools.service import ToolService
from symbi_sandbox_agent.tools.stdio import MAX_LINE_BYTES
from symbi_sandbox_agent.tools.url_egress import UrlEgress

from .test_tool_answers_fuzz import MemoryRegistry
from .tools_support import bundle, keypair

_, PUBLIC = keypair()
LIMIT = MAX_LINE_BYTES
#: What the hostile server sends at most before it stalls (a client that reads it all holds all of it).
CAP = 8 * LIMIT
#: What may be in flight beyond the limit when the client stops reading: the sockets' buffers on loopback.
SLACK = 8 * 1024 * 1024
LOOPBACK = UrlEgress(AddressPolicy.parse(["127.0.0.1/32"]))
TOO_LARGE = rf"tool server 'web' sent a message of more than {LIMIT} bytes"


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a free loopback port: the URL of its ``/mcp``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    finally:
        server.should_exit = True
        await task
        sock.close()


def registration(url: str) -> ToolServerRegistered:
    return ToolServerRegistered(server="web", transport="http", url=url)


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[McpConnection]:
    reg = registration(url)
    conn = McpConnection("web", transport_for(reg, egress=LOOPBACK), registration=reg)
    await conn.start(timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


# --- a hostile server -----------------------------------------------------------------------------------------


class Hostile:
    """``tools/list`` answered by a JSON body that never ends (tool after tool), ``tools/call`` by an event whose
    data line never ends; each sends at most :data:`CAP` bytes and then stalls, its answer still open.
    :attr:`sent` counts the bytes each got to send, :attr:`hung_up` is set when it saw the client hang up. With
    ``gzip``, ``tools/list`` is answered by a small compressed body holding :data:`CAP` bytes of JSON."""

    def __init__(self, *, compressed: bool = False) -> None:
        self.compressed = compressed
        self.sent: dict[str, int] = {"tools/list": 0, "tools/call": 0}
        self.hung_up = asyncio.Event()
        self.app = Starlette(routes=[Route("/mcp", self.mcp, methods=["GET", "POST", "DELETE"])])

    async def endless(self, request: Request, method: str, head: bytes, unit: bytes) -> AsyncIterator[bytes]:
        chunk = head
        while self.sent[method] < CAP:
            if await request.is_disconnected():
                self.hung_up.set()
                return
            yield chunk
            self.sent[method] += len(chunk)
            chunk = unit
        await asyncio.Event().wait()  # stalled: the answer never ends

    async def mcp(self, request: Request) -> Response:
        if request.method != "POST":
            return Response(status_code=405)
        message = await request.json()
        method, rid = message.get("method"), message.get("id")
        if rid is None:
            return Response(status_code=202)
        if method == "initialize":
            result = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "hostile", "version": "1"},
            }
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": result})
        if method == "tools/list" and self.compressed:
            body = json.dumps({"jsonrpc": "2.0", "id": rid, "result": {"tools": [], "pad": "0" * CAP}}).encode()
            return Response(gzip.compress(body), media_type="application/json", headers={"content-encoding": "gzip"})
        if method == "tools/list":
            head = b'{"jsonrpc": "2.0", "id": %s, "result": {"tools": [' % json.dumps(rid).encode()
            unit = b'{"name": "t", "inputSchema": {"type": "object"}}, ' * 1024
            return StreamingResponse(self.endless(request, method, head, unit), media_type="application/json")
        if method == "tools/call":
            head = (
                b'event: message\ndata: {"jsonrpc": "2.0", "id": %s, "result": {"content": [{"type": "text", "text": "'
            )
            unit = b"x" * 65536
            stream = self.endless(request, method, head % json.dumps(rid).encode(), unit)
            return StreamingResponse(stream, media_type="text/event-stream")
        error = {"code": -32601, "message": f"no method {method}"}
        return JSONResponse({"jsonrpc": "2.0", "id": rid, "error": error})


async def test_a_json_answer_that_never_ends_fails_the_listing_at_the_limit() -> None:
    hostile = Hostile()
    async with served(hostile.app) as url, connected(url) as conn:
        with pytest.raises(ToolRefused, match=TOO_LARGE):
            await conn.list_tools(timeout=10)
        await asyncio.wait_for(hostile.hung_up.wait(), 10)  # the client stopped reading it
        assert LIMIT < hostile.sent["tools/list"] <= LIMIT + SLACK < CAP
        with pytest.raises(ToolResultTooLarge, match=TOO_LARGE):  # the session is still there for the next
            await conn.call("anything", {}, 10)


async def test_an_event_that_never_ends_fails_the_call_at_the_limit() -> None:
    hostile = Hostile()
    async with served(hostile.app) as url, connected(url) as conn:
        with pytest.raises(ToolResultTooLarge, match=TOO_LARGE) as caught:
            await conn.call("anything", {}, 10)
        assert caught.value.details["max_message_bytes"] == LIMIT
        await asyncio.wait_for(hostile.hung_up.wait(), 10)
        assert LIMIT < hostile.sent["tools/call"] <= LIMIT + SLACK < CAP


async def test_a_compressed_answer_is_refused_unread() -> None:
    hostile = Hostile(compressed=True)
    async with served(hostile.app) as url, connected(url) as conn:
        with pytest.raises(ToolRefused, match="tool server 'web' sent a gzip-compressed answer"):
            await conn.list_tools(timeout=10)


# --- the SDK's server -------------------------------------------------------------------------------------------


def big(n: int) -> str:
    """n bytes of text."""
    return "x" * n


@pytest.mark.parametrize("json_response", [True, False], ids=["json", "event-stream"])
async def test_a_result_over_the_limit_fails_that_call_only(json_response: bool) -> None:
    server = MCPServer("big")
    server.add_tool(big, description="Return n bytes of text.")
    async with served(server.streamable_http_app(json_response=json_response)) as url:
        tools = ToolService(MemoryRegistry(), bundle(PUBLIC), egress=LOOPBACK)
        try:
            await tools.register(registration(url))
            await tools.approve("web.big", by="op")
            with pytest.raises(ToolResultTooLarge, match=TOO_LARGE):
                await tools.call("web.big", {"n": LIMIT + 1})
            assert (await tools.call("web.big", {"n": 3})).result["structuredContent"] == {"result": "xxx"}
            # Under the limit but over what is passed on to an agent: dropped as before, by the service.
            with pytest.raises(ToolResultTooLarge, match="at most 262144 are passed on"):
                await tools.call("web.big", {"n": 2 * 1024 * 1024})
        finally:
            await tools.close()
