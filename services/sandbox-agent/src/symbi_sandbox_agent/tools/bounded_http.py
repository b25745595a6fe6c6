"""A streamable-HTTP transport for MCP servers that bounds each message. I/O.

The ``mcp`` SDK's streamable-HTTP client reads a JSON answer whole, however large it is: a server whose answer
never ends would grow the daemon without bound. (It bounds an event of an event stream, by default at 1 MiB, and
fails the request then as if the connection had closed.) Here the client's HTTP transport counts the bytes of
each answer as they come, under the stdio transport's limit (:data:`MAX_MESSAGE_BYTES`): a JSON body, or one
event of an event stream, larger than that is dropped (the connection it came on closed, nothing of it passed
on), and the request it answered gets instead a JSON-RPC error :data:`MESSAGE_TOO_LARGE` naming the server and
the limit, which :class:`~symbi_sandbox_agent.tools.servers.McpConnection` raises as a typed error. The session
stays open for the next request. A compressed answer is refused unread (its size is not that of what it holds):
none is asked for. Time is bounded by the client's timeouts (:data:`TIMEOUT`) and the caller's own.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import structlog
from mcp.client.streamable_http import streamable_http_client

from symbi_sandbox_agent.tools.stdio import MAX_LINE_BYTES

log = structlog.get_logger(__name__)

#: The largest message a server may send (a JSON answer, one event): the stdio transport's longest line.
MAX_MESSAGE_BYTES = MAX_LINE_BYTES
#: The JSON-RPC error a request gets instead of an answer that is too large (or compressed): one of the codes
#: JSON-RPC leaves to implementations, none of which the SDK uses.
MESSAGE_TOO_LARGE = -32099
#: Seconds to connect (and to write, and to wait for a pooled connection), and between two reads of an answer
#: (an event stream may stay open): the MCP SDK's own.
TIMEOUT = httpx2.Timeout(30.0, read=300.0)
#: An empty line, which ends an event of an event stream (a line ends in CRLF, LF or CR; CRLF is one ending).
_EVENT_END = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")


def _request_id(request: httpx2.Request) -> Any:
    """The JSON-RPC id of the request ``request`` carries (None for a notification, or none)."""
    try:
        message = json.loads(request.content) if request.content else None
    except (ValueError, httpx2.RequestNotRead):
        return None
    return message.get("id") if isinstance(message, dict) else None


class BoundedTransport(httpx2.AsyncBaseTransport):
    """An HTTP transport whose every answer is read under ``limit`` bytes a message (see the module)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, server: str, limit: int = MAX_MESSAGE_BYTES) -> None:
        self.inner = inner
        self.server = server
        self.limit = limit

    def too_large(self) -> str:
        return f"tool server {self.server!r} sent a message of more than {self.limit} bytes; it was dropped"

    def error(self, request: httpx2.Request, message: str) -> bytes:
        """The JSON-RPC error the request gets instead of the server's answer."""
        error = {"code": MESSAGE_TOO_LARGE, "message": message, "data": {"max_message_bytes": self.limit}}
        return json.dumps({"jsonrpc": "2.0", "id": _request_id(request), "error": error}).encode()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        stream = response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            await stream.aclose()
            refused = f"tool server {self.server!r} sent a {encoding}-compressed answer; none was asked for"
            return self._instead(response, request, refused)
        content_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type == "text/event-stream":
            message = self.too_large()
            instead = self.error(request, message) if _request_id(request) is not None else b""
            events = BoundedEvents(stream, self.limit, message, instead)
            return httpx2.Response(
                response.status_code, headers=response.headers, stream=events, extensions=response.extensions
            )
        body = await self._body(stream, response.headers.get("content-length", ""))
        if body is None:
            return self._instead(response, request, self.too_large())
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx2.ByteStream(body),
            extensions=response.extensions,
        )

    async def _body(self, stream: httpx2.AsyncByteStream, length: str) -> bytes | None:
        """The whole body, or None (the rest unread, the connection closed) once it passes the limit."""
        body = bytearray()
        try:
            if length.isdigit() and int(length) > self.limit:
                return None
            async for chunk in stream:
                body += chunk
                if len(body) > self.limit:
                    return None
        finally:
            await stream.aclose()
        return bytes(body)

    def _instead(self, response: httpx2.Response, request: httpx2.Request, message: str) -> httpx2.Response:
        log.error("an MCP server's answer is refused", server=self.server, error=message)
        return httpx2.Response(
            200,
            headers={"content-type": "application/json"},
            content=self.error(request, message),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class BoundedEvents(httpx2.AsyncByteStream):
    """An event stream passed on an event at a time, each once it is complete; one larger than ``limit`` (the
    bytes since the last empty line) ends the stream, its connection closed, with the JSON-RPC error ``instead``
    sent as the event in its place (none for a stream that answers no request: the SDK opens a stream of the
    server's own messages again). What is passed on is what came, cut only between events."""

    def __init__(self, stream: httpx2.AsyncByteStream, limit: int, message: str, instead: bytes) -> None:
        self.stream = stream
        self.limit = limit
        self.message = message
        self.instead = instead

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pending = bytearray()  # the event under way (and what ends the last one, a CR or LF of it perhaps)
        try:
            async for chunk in self.stream:
                searched = max(0, len(pending) - 3)  # an ending split between two chunks is found whole
                pending += chunk
                end = 0
                for found in _EVENT_END.finditer(pending, searched):
                    end = found.end()
                if end:
                    yield bytes(pending[:end])
                    del pending[:end]
                if len(pending) > self.limit:
                    log.error("an MCP server's event is dropped", error=self.message)
                    if self.instead:
                        yield b"event: message\ndata: " + self.instead + b"\n\n"
                    return
            if pending:
                yield bytes(pending)
        finally:
            await self.stream.aclose()

    async def aclose(self) -> None:
        await self.stream.aclose()


def bounded_client(
    server: str, transport: httpx2.AsyncBaseTransport | None = None, *, limit: int = MAX_MESSAGE_BYTES
) -> httpx2.AsyncClient:
    """An HTTP client for ``server`` over ``transport`` (a plain one by default) bounded by :class:`BoundedTransport`: no
    proxy from the environment (it would be a transport of its own, unbounded), no compression, no redirects
    (the MCP SDK follows same-origin ones itself)."""
    inner = transport or httpx2.AsyncHTTPTransport(trust_env=False)
    return httpx2.AsyncClient(
        transport=BoundedTransport(inner, server, limit),
        timeout=TIMEOUT,
        trust_env=False,
        headers={"accept-encoding": "identity"},
    )


@asynccontextmanager
async def bounded_http_client(
    url: str, server: str, transport: httpx2.AsyncBaseTransport | None = None, *, limit: int = MAX_MESSAGE_BYTES
) -> AsyncIterator[Any]:
    """The MCP SDK's streamable-HTTP transport to ``url`` over :func:`bounded_client`: ``(read stream, write
    stream)`` as the SDK's. (The SDK's own bound of an event is set to the same limit: never the first to pass.)"""
    async with (
        bounded_client(server, transport, limit=limit) as client,
        streamable_http_client(url, http_client=client, max_sse_event_size=limit) as streams,
    ):
        yield streams
