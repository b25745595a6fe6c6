"""The stdio transport of MCP servers bounds each message: a server writing an endless line is cut off, not
buffered until the daemon runs out of memory."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from symbi_common.eventstore import EventStore
from symbi_contracts.tools.errors import ToolServerUnavailable
from symbi_contracts.tools.events import ToolServerRegistered
from symbi_sandbox_agent.tools.limits import ToolLimits
from symbi_sandbox_agent.tools.service import ToolService
from symbi_sandbox_agent.tools.stdio import MAX_LINE_BYTES, LineTooLong, lines_of
from symbi_sandbox_agent.tools.stored_registry import StoredRegistry

from .tools_support import bundle, keypair

_, PUBLIC = keypair()

#: Answers nothing: writes 64 MiB without a newline as soon as it is asked anything, then waits.
ENDLESS = """
import sys, time
sys.stdin.readline()
chunk = b"x" * (1 << 20)
for _ in range(64):
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
time.sleep(120)
"""


def test_lines_are_split_across_chunks_and_bounded() -> None:
    buffer = bytearray()
    assert lines_of(buffer, b'{"a": 1}\n{"b"', 100) == [b'{"a": 1}']
    assert lines_of(buffer, b": 2}", 100) == []
    assert lines_of(buffer, b"\n\n", 100) == [b'{"b": 2}', b""]
    assert buffer == b""
    with pytest.raises(LineTooLong):
        lines_of(buffer, b"x" * 101, 100)
    with pytest.raises(LineTooLong):
        lines_of(bytearray(b"x" * 60), b"x" * 60 + b"\n", 100)


@pytest.fixture
async def tools(make_store: Callable[..., Awaitable[EventStore]]) -> AsyncIterator[ToolService]:
    store = await make_store("sandbox-agent")
    service = ToolService(StoredRegistry(store), bundle(PUBLIC), limits=ToolLimits(timeout_s=5.0), local=True)
    yield service
    await service.close()


async def test_a_server_writing_an_endless_line_is_cut_off(tools: ToolService) -> None:
    """Before, the SDK's transport buffered the line (all 64 MiB, copied on every chunk) and the session waited
    for the start timeout (60 s); now the session ends once the line passes the bound."""
    assert MAX_LINE_BYTES < 64 * 1024 * 1024
    started = time.monotonic()
    with pytest.raises(ToolServerUnavailable):
        await tools.register(
            ToolServerRegistered(server="endless", transport="stdio", command=(sys.executable, "-c", ENDLESS))
        )
    assert time.monotonic() - started < 20
