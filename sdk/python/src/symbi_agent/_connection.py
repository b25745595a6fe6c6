"""One socket connection of the asynchronous client: requests written, answers matched to them by id.

An answer without an id (``"id": null``: a line too long or nested too deep, a gateway fault) names no request,
so it fails every call waiting on the connection — the one in flight when there is one — with its error. A call
that times out retires its connection: no new request goes on it (a late answer there could only be dropped,
never taken for another's), and it is closed once the calls still waiting on it are done.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from symbi_agent import _wire
from symbi_agent.errors import ChannelError, ChannelTimeout


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.retired = False
        self._pump = asyncio.get_running_loop().create_task(self._read_answers())

    @classmethod
    async def open(cls, path: str) -> Connection:
        """:class:`OSError` if the socket cannot be connected to."""
        reader, writer = await asyncio.open_unix_connection(path, limit=_wire.MAX_LINE_BYTES)
        return cls(reader, writer)

    @property
    def usable(self) -> bool:
        """Whether a new request may go on this connection (not retired, not closed by the gateway)."""
        return not self.retired and not self._pump.done()

    @property
    def closed(self) -> bool:
        return self._pump.done()

    async def exchange(self, op: str, request_id: int, line: bytes, deadline: float) -> dict[str, Any]:
        """The answer to the request ``line``; :class:`ChannelTimeout` past ``deadline`` seconds."""
        if self._writer.is_closing():
            raise ChannelError(f"the connection closed before {op} was sent")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            async with asyncio.timeout(deadline):
                self._writer.write(line)
                await self._writer.drain()
                return await future
        except TimeoutError:
            self.retired = True
            message = f"no answer to {op} within {deadline:g} s; later calls go on a new connection"
            raise ChannelTimeout(message) from None
        except OSError as exc:
            raise ChannelError(f"the channel failed during {op}: {exc}") from None
        finally:
            self._waiting.pop(request_id, None)
            if self.retired and not self._waiting:
                await self.close()

    async def _read_answers(self) -> None:
        failure: Exception = ChannelError("the channel closed")
        try:
            while line := await self._reader.readline():
                self._take(_wire.decode_reply(line))
        except Exception as exc:
            failure = exc if isinstance(exc, ChannelError) else ChannelError(f"the channel failed: {exc}")
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(failure)

    def _take(self, reply: dict[str, Any]) -> None:
        request_id = reply.get("id")
        if request_id is None:
            if reply["type"] == "error":  # names no request: it can be any of those waiting
                for future in self._waiting.values():
                    if not future.done():
                        future.set_result(reply)
            return
        waiting = self._waiting.get(request_id)
        if waiting is not None and not waiting.done():
            waiting.set_result(reply)

    async def close(self) -> None:
        """Close the connection; calls still waiting on it fail with :class:`ChannelError`."""
        self.retired = True
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ChannelError("the client was closed before the answer came"))
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        if self._pump is not asyncio.current_task():
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
