"""Connections to MCP servers, with the ``mcp`` SDK as client (over our own stdio transport, and the SDK's
streamable-HTTP one over our HTTP transport, each of which bounds a message: :mod:`symbi_sandbox_agent.tools.stdio`,
:mod:`symbi_sandbox_agent.tools.bounded_http`). I/O.

A stdio server runs in its own sandbox container: ``docker run -i`` of its image pinned by digest, without
network, read-only, all capabilities dropped, as nobody, with the tier's runtime (``runc`` or gVisor's
``runsc``) and only the environment its registration names. A streamable-HTTP server is reached at its URL.
:func:`local_command` runs a stdio server as a plain child process instead: for development and the
benchmark, never chosen by a registration.

The connection keeps one ``ClientSession`` open in a task of its own (the SDK's transports are anyio
context managers that must be left in the task that entered them). ``tools/list`` is asked each time
:meth:`McpConnection.list_tools` is called, never cached, and a ``notifications/tools/list_changed`` from the
server sets :attr:`McpConnection.changed` so the registry re-reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import mcp.types as mt
from mcp.client.session import ClientSession, IncomingMessage
from mcp.shared.exceptions import MCPError
from symbi_contracts.tools.declarations import PINNED_IMAGE
from symbi_contracts.tools.errors import (
    ToolCallFailed,
    ToolRefused,
    ToolResultTooLarge,
    ToolServerUnavailable,
    ToolTimeout,
)
from symbi_contracts.tools.events import ToolServerRegistered

from symbi_sandbox_agent.tools.bounded_http import MAX_MESSAGE_BYTES, MESSAGE_TOO_LARGE, bounded_http_client
from symbi_sandbox_agent.tools.stdio import bounded_stdio_client
from symbi_sandbox_agent.tools.url_egress import UrlEgress, checked_streams

#: The runtime of each tier (the same ones the task sandboxes use).
RUNTIMES = {"tier1": "runc", "tier2": "runsc"}
START_TIMEOUT_S = 60.0
#: Seconds a server has to list its tools (all pages), unless the caller says otherwise.
LIST_TIMEOUT_S = 60.0
REQUEST_TIMEOUT = -32001
CONNECTION_CLOSED = -32000
#: Characters of a server's error message passed on.
MAX_ERROR_CHARS = 500

Transport = Callable[[], AbstractAsyncContextManager[Any]]


def container_name(server: str) -> str:
    """A fresh name for ``server``'s sandbox container (one per connection)."""
    return f"symbi-tool-{server}-{uuid.uuid4().hex[:8]}"


def sandbox_command(reg: ToolServerRegistered, *, name: str = "", memory_mb: int = 256, pids: int = 128) -> list[str]:
    """The ``docker run`` that runs a stdio server in its sandbox container ``name``; refuses an image not
    pinned by digest."""
    if not PINNED_IMAGE.fullmatch(reg.image):
        raise ToolRefused(f"server {reg.server!r}: image {reg.image!r} is not pinned by digest (sha256:…)")
    if not reg.command:
        raise ToolRefused(f"server {reg.server!r}: a stdio server needs a command")
    name = name or container_name(reg.server)
    args = ["docker", "run", "-i", "--rm", "--name", name, "--label", f"symbi.tool_server={reg.server}"]
    args += ["--network", "none", "--runtime", RUNTIMES[reg.tier], "--read-only", "--cap-drop", "ALL"]
    args += ["--security-opt", "no-new-privileges", "--user", "65534:65534", "--pids-limit", str(pids)]
    # /tmp inside the container: a small private tmpfs, not the host's.
    args += ["--memory", f"{memory_mb}m", "--tmpfs", "/tmp:rw,nosuid,nodev,size=16m", "--log-driver", "none"]  # noqa: S108
    for key, value in sorted(reg.env.items()):
        args += ["-e", f"{key}={value}"]
    return [*args, reg.image, *reg.command]


def transport_for(
    reg: ToolServerRegistered,
    *,
    local: bool = False,
    container: str = "",
    egress: UrlEgress | None = None,
    limit: int = MAX_MESSAGE_BYTES,
) -> Transport:
    """How to reach ``reg``'s server; ``local`` runs a stdio command as a child of this process, else it runs
    in the sandbox container ``container`` (a fresh name when empty). A URL is reached under ``egress``'s
    address rules (None: unchecked, for development only). Either way a message of the server's (a line, a JSON
    answer, an event) may have at most ``limit`` bytes."""
    if reg.transport == "http":
        if not reg.url.startswith(("http://", "https://")):
            raise ToolRefused(f"server {reg.server!r}: {reg.url!r} is not an http(s) URL")
        if egress is not None:
            checked = egress
            return lambda: checked_streams(reg.url, checked, reg.server, limit=limit)
        return lambda: bounded_http_client(reg.url, reg.server, limit=limit)
    argv = list(reg.command) if local else sandbox_command(reg, name=container)
    if not argv:
        raise ToolRefused(f"server {reg.server!r}: a stdio server needs a command")
    env = dict(reg.env)
    return lambda: bounded_stdio_client(argv, env, limit=limit)


class McpConnection:
    """One open MCP client session to one server."""

    def __init__(
        self,
        server: str,
        transport: Transport,
        *,
        registration: ToolServerRegistered | None = None,
        container: str = "",
    ) -> None:
        self.server = server
        self.transport = transport
        #: The registration this connection was made for: another one (the server removed and added again,
        #: perhaps through another daemon) means this connection is stale.
        self.registration = registration
        #: The sandbox container the server runs in ("" for a URL or a local child process).
        self.container = container
        self.session: ClientSession | None = None
        #: Set when the server said its tool list changed (:attr:`changes` counts how often), or a listing
        #: failed; cleared once a listing begun after the last such notice is stored (``ToolService.refresh``),
        #: never when one begins: until it is stored, what is stored is what the server listed before.
        self.changed = asyncio.Event()
        self.changes = 0
        #: The ticket of the last listing begun and of the last one stored, and the lock listings are stored
        #: under, one at a time: one begun before the last one stored is older news and is not stored.
        self.listings = 0
        self.stored = 0
        self.storing = asyncio.Lock()
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, mt.ToolListChangedNotification):
            self.changes += 1
            self.changed.set()

    async def _run(self) -> None:
        try:
            async with (
                self.transport() as (read, write),
                ClientSession(read, write, message_handler=self._on_message) as session,
            ):
                await session.initialize()
                self.session = session
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            self.session = None
            self._ready.set()

    async def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server (or connect to it) and initialise the session."""
        self._task = asyncio.create_task(self._run(), name=f"mcp-{self.server}")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            await self.close()
            raise ToolServerUnavailable(f"tool server {self.server!r} did not start in {timeout:g} s") from None
        if self.session is None:
            await self.close()
            raise ToolServerUnavailable(f"tool server {self.server!r} could not be started: {self._failure!r}")

    def _live(self) -> ClientSession:
        if self.session is None:
            raise ToolServerUnavailable(f"tool server {self.server!r} is not running: {self._failure!r}")
        return self.session

    async def list_tools(self, timeout: float = LIST_TIMEOUT_S) -> list[dict[str, Any]]:
        """Every tool the server lists now (all pages), in wire form; never from a cache. A listing answered
        with an error or with what is not a tool list is :class:`ToolRefused`; one not complete in ``timeout``
        seconds (an answer that never comes or is not JSON-RPC) or a closed connection
        :class:`ToolServerUnavailable`."""
        session, tools, cursor = self._live(), [], None
        try:
            async with asyncio.timeout(timeout):
                for _ in range(100):
                    params: mt.PaginatedRequestParams | None = None
                    if cursor:
                        params = mt.PaginatedRequestParams(cursor=cursor)
                    page = await session.list_tools(params=params)
                    tools += [t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in page.tools]
                    cursor = page.next_cursor
                    if not cursor:
                        return tools
        except TimeoutError:
            raise ToolServerUnavailable(
                f"tool server {self.server!r} did not list its tools in {timeout:g} s", timeout_s=timeout
            ) from None
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                raise ToolServerUnavailable(f"tool server {self.server!r} closed the connection") from None
            if exc.code == MESSAGE_TOO_LARGE:  # (the transport's bound, bounded_http)
                raise ToolRefused(exc.message[:MAX_ERROR_CHARS]) from None
            message = f"tool server {self.server!r} answered tools/list with error {exc.code}: {exc.message}"
            raise ToolRefused(message[:MAX_ERROR_CHARS]) from None
        except (ValueError, RuntimeError) as exc:  # pydantic's ValidationError is a ValueError
            message = f"tool server {self.server!r} answered tools/list with what is not a tool list: {exc}"
            raise ToolRefused(message[:MAX_ERROR_CHARS]) from None
        raise ToolRefused(f"tool server {self.server!r} lists more than 100 pages of tools")

    async def call(self, tool: str, arguments: dict[str, Any], timeout: float) -> mt.CallToolResult:
        """Call ``tool``; a server that does not answer in ``timeout`` seconds raises :class:`ToolTimeout`, one
        that answers with an error or with what is not a result (not one, or not matching the tool's output
        schema) :class:`ToolCallFailed`, a closed connection :class:`ToolServerUnavailable`."""
        try:
            return await self._live().call_tool(tool, arguments, read_timeout_seconds=timeout)
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise ToolTimeout(f"{self.server}.{tool} did not answer in {timeout:g} s", timeout_s=timeout) from None
            if exc.code == CONNECTION_CLOSED:
                raise ToolServerUnavailable(f"tool server {self.server!r} closed the connection") from None
            if exc.code == MESSAGE_TOO_LARGE:  # (the transport's bound, bounded_http)
                limit = exc.data.get("max_message_bytes") if isinstance(exc.data, dict) else None
                limit = limit if isinstance(limit, int) else None  # (a server may send this code itself)
                raise ToolResultTooLarge(exc.message[:MAX_ERROR_CHARS], max_message_bytes=limit) from None
            message = f"{self.server}.{tool} answered with error {exc.code}: {exc.message}"
            raise ToolCallFailed(message[:MAX_ERROR_CHARS], error_code=exc.code) from None
        except (ValueError, RuntimeError) as exc:  # malformed (pydantic), off its output schema, input required
            message = f"{self.server}.{tool} answered with what is not a usable result: {exc}"
            raise ToolCallFailed(message[:MAX_ERROR_CHARS]) from None

    async def close(self) -> None:
        """Close the session and stop the server, its sandbox container removed; idempotent."""
        self._stop.set()
        if self._task is not None:
            if self.session is None:  # still starting (or it failed): nothing waits for the stop, cancel it
                self._task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 10)
            self._task = None
        if self.container:
            await remove_container(self.container)
            self.container = ""


async def remove_container(name: str) -> None:
    """Remove container ``name`` if it is still there (``docker run --rm`` normally has: closing the server's
    stdin ends it; a server that ignores that is killed here)."""
    proc = await asyncio.create_subprocess_exec(
        "docker", "rm", "-f", name, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode and b"No such container" not in err and b"already in progress" not in err:
        raise ToolServerUnavailable(f"could not remove the sandbox container {name}: {err.decode(errors='replace')}")


@contextlib.asynccontextmanager
async def connected(server: str, transport: Transport) -> AsyncIterator[McpConnection]:
    conn = McpConnection(server, transport)
    await conn.start()
    try:
        yield conn
    finally:
        await conn.close()
