"""A stdio transport for MCP servers that bounds each message. I/O.

The ``mcp`` SDK's ``stdio_client`` keeps what a server writes until it sees a newline, however much that is
(and copies it on every chunk): a server writing one endless line would grow the daemon without bound and stall
its event loop, which every run on the host shares. This one reads the server's stdout in chunks and ends the
session when a line passes :data:`MAX_LINE_BYTES`: the session sees its stream close, and the server is
unavailable. It otherwise speaks as the SDK's does (one JSON-RPC message per line, UTF-8) and hands the session
the same streams.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
import structlog
from mcp.client.stdio import get_default_environment
from mcp.shared.message import SessionMessage

log = structlog.get_logger(__name__)

#: The longest line (one JSON-RPC message) a server may write: a listing of many tools, or a large result.
MAX_LINE_BYTES = 8 * 1024 * 1024
#: How long a server has to exit once its stdin is closed, before it is killed.
EXIT_GRACE_S = 2.0


class LineTooLong(Exception):
    """The server wrote more than :data:`MAX_LINE_BYTES` without ending the line."""


def lines_of(buffer: bytearray, chunk: bytes, limit: int) -> list[bytes]:
    """The complete lines ``chunk`` ends, taken out of ``buffer`` (which keeps the unfinished rest);
    :class:`LineTooLong` when a line, or the unfinished rest, passes ``limit``. Only the new chunk is searched."""
    if b"\n" not in chunk:
        buffer += chunk
        lines = []
    else:
        head, *middle, tail = chunk.split(b"\n")
        lines = [bytes(buffer) + head, *middle]
        buffer[:] = tail
    if len(buffer) > limit or any(len(line) > limit for line in lines):
        raise LineTooLong(f"the server wrote a line of more than {limit} bytes")
    return lines


def _message(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        return exc


@asynccontextmanager
async def bounded_stdio_client(
    argv: Sequence[str], env: Mapping[str, str], *, limit: int = MAX_LINE_BYTES
) -> AsyncIterator[tuple[Any, Any]]:
    """Run ``argv`` and speak MCP over its stdin/stdout: ``(read stream, write stream)`` as the SDK's."""
    process = await anyio.open_process(
        list(argv),
        env={**get_default_environment(), **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,  # the daemon's, as the SDK's transport does
    )
    incoming_w, incoming = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    outgoing, outgoing_r = anyio.create_memory_object_stream[SessionMessage](0)

    async def read() -> None:
        assert process.stdout is not None
        buffer = bytearray()
        async with incoming_w:
            try:
                async for chunk in process.stdout:
                    for line in lines_of(buffer, chunk, limit):
                        if line.strip():
                            await incoming_w.send(_message(line))
            except LineTooLong as exc:
                log.error("an MCP server's message is too long; its session is closed", error=str(exc))
                process.kill()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass

    async def write() -> None:
        assert process.stdin is not None
        async with outgoing_r:
            try:
                async for message in outgoing_r:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    await process.stdin.send(data.encode())
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                await incoming_w.aclose()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            tg.start_soon(write)
            try:
                yield incoming, outgoing
            finally:
                with anyio.CancelScope(shield=True):
                    await outgoing.aclose()
                    if process.stdin is not None:
                        await process.stdin.aclose()
                    with anyio.move_on_after(EXIT_GRACE_S):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()  # its stdout pipe too: a killed server's was left open until collected
