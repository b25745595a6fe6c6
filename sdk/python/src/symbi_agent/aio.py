"""The asynchronous client: several requests in flight on one socket connection, answers matched by id.

    async with AsyncAgent() as agent:
        await agent.memory.store("…")

Over stdio (no socket) requests go one at a time through the synchronous client on a thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from symbi_agent import _wire
from symbi_agent._connection import Connection
from symbi_agent.client import Agent
from symbi_agent.data import Data
from symbi_agent.deadlines import Deadlines, resolve
from symbi_agent.errors import ChannelError
from symbi_agent.namespaces import Knowledge, Memory, Messages, Models, Tools, Web


class AsyncAgent:
    """The asynchronous client; ``timeout`` and ``deadlines`` as for :class:`Agent`. A call past its deadline
    raises :class:`~symbi_agent.errors.ChannelTimeout` and later calls go on a new connection."""

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        stdio: bool = False,
        timeout: float | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        self._path = None if stdio else (socket_path or _wire.socket_path())
        self._named = socket_path is not None
        self._deadlines = resolve(deadlines, timeout)
        self.channel = "socket" if self._path else "stdio"
        self._limit = _wire.request_limit(self.channel)
        self._connection: Connection | None = None
        self._retired: set[Connection] = set()
        self._connect_lock = asyncio.Lock()
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
            self._connection = await Connection.open(self._path)
        except OSError as exc:
            if self._named:
                raise ChannelError(f"cannot connect to the channel socket {self._path}: {exc}") from None
            self.channel, self._sync = "stdio", Agent(stdio=True)  # $SYMBI_SOCKET unusable: the fallback
            self._limit = _wire.request_limit(self.channel)
        return self

    async def call(self, op: str, args: dict[str, Any] | None = None, context: dict[str, Any] | None = None) -> Any:
        """Send one request and return its result, or raise its typed error."""
        if self._sync is not None:
            async with self._stdio_lock:
                return await asyncio.to_thread(self._sync.call, op, args, context)
        args = args or {}
        request_id = _wire.next_id()
        line = _wire.encode_request(request_id, op, args, context)
        _wire.check_size(line, op, self._limit)
        connection = await self._connected()
        reply = await connection.exchange(op, request_id, line, self._deadlines.for_call(op, args))
        return _wire.unwrap(reply)

    async def _connected(self) -> Connection:
        """The connection for a new request: the current one, or a new one after it was retired or closed."""
        if self._connection is None:
            raise ChannelError("not connected (use 'async with AsyncAgent()' or await connect())")
        async with self._connect_lock:
            if not self._connection.usable:
                assert self._path is not None
                self._retired = {old for old in self._retired if not old.closed}
                if self._connection.closed:
                    await self._connection.close()
                else:
                    self._retired.add(self._connection)  # closes itself once its calls are done
                try:
                    self._connection = await Connection.open(self._path)
                except OSError as exc:
                    raise ChannelError(f"cannot connect to the channel socket {self._path}: {exc}") from None
            return self._connection

    async def hello(self) -> dict[str, Any]:
        """As :meth:`Agent.hello`; later requests are held to the ``max_request_bytes`` it names."""
        if self._sync is not None:
            async with self._stdio_lock:
                return await asyncio.to_thread(self._sync.hello)
        result: dict[str, Any] = await self.call("hello", {"versions": [_wire.PROTOCOL_VERSION]})
        self._limit = _wire.request_limit(self.channel, result)
        return result

    async def close(self) -> None:
        connections, self._connection = [self._connection, *self._retired], None
        self._retired.clear()
        for connection in connections:
            if connection is not None:
                await connection.close()

    async def __aenter__(self) -> AsyncAgent:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
