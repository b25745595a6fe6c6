"""The asynchronous client: several requests in flight on one socket connection, answers matched by id.

    async with AsyncAgent() as agent:
        await agent.memory.store("…")

Over stdio (no socket) requests go one at a time through the synchronous client on a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from symbi_agent import _wire
from symbi_agent.client import Agent
from symbi_agent.data import Data
from symbi_agent.errors import ChannelError
from symbi_agent.namespaces import Knowledge, Memory, Messages, Models, Tools, Web


class AsyncAgent:
    def __init__(self, socket_path: str | None = None, *, stdio: bool = False) -> None:
        self._path = None if stdio else (socket_path or _wire.socket_path())
        self._named = socket_path is not None
        self.channel = "socket" if self._path else "stdio"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pump: asyncio.Task[None] | None = None
        self._sync: Agent | None = None
        self._stdio_lock = asyncio.Lock()
        self.memory = Memory(self.call)
        self.knowledge = Knowledge(self.call)
        self.data = Data(self.call)
        self.messages = Messages(self.call)
        self.tools = Tools(self.call)
        self.http = Web(self.call)
        self.models = Models(self.call)

    async def connect(self) -> AsyncAgent:
        if self._path is None:
            self._sync = Agent(stdio=True)
            return self
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(self._path, limit=_wire.MAX_LINE_BYTES)
        except OSError as exc:
            if self._named:
                raise ChannelError(f"cannot connect to the channel socket {self._path}: {exc}") from None
            self.channel, self._sync = "stdio", Agent(stdio=True)  # $SYMBI_SOCKET unusable: the fallback
            return self
        self._pump = asyncio.get_running_loop().create_task(self._read_answers())
        return self

    async def _read_answers(self) -> None:
        assert self._reader is not None
        failure: Exception = ChannelError("the channel closed")
        try:
            while line := await self._reader.readline():
                reply = _wire.decode_reply(line)
                future = self._waiting.pop(reply.get("id"), None)  # type: ignore[arg-type]
                if future is not None and not future.done():
                    future.set_result(reply)
        except Exception as exc:
            failure = exc if isinstance(exc, ChannelError) else ChannelError(f"the channel failed: {exc}")
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(failure)
        self._waiting.clear()

    async def call(self, op: str, args: dict[str, Any] | None = None, context: dict[str, Any] | None = None) -> Any:
        """Send one request and return its result, or raise its typed error."""
        if self._sync is not None:
            async with self._stdio_lock:
                return await asyncio.to_thread(self._sync.call, op, args, context)
        if self._writer is None or self._pump is None or self._pump.done():
            raise ChannelError("not connected (use 'async with AsyncAgent()' or await connect())")
        request_id = _wire.next_id()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._writer.write(_wire.encode_request(request_id, op, args or {}, context))
        await self._writer.drain()
        return _wire.unwrap(await future)

    async def hello(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("hello", {"versions": [_wire.PROTOCOL_VERSION]})
        return result

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

    async def __aenter__(self) -> AsyncAgent:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
