"""Publish-and-wait-for-the-ack, like ``nc.request`` but cheaper per call: the event store's send path.

Acks arrive on one wildcard reply subscription, keyed by a counter token, and one timer sweeps expired
requests: no NUID, random bytes, ``wait_for`` or timer per append (together about 7 us of CPU per append).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import Any

import nats.errors


class AckRequests:
    """Requests on ``nc`` answered through one reply subscription; each fails after ``timeout`` seconds."""

    def __init__(self, nc: Any, timeout: float) -> None:
        self.nc = nc
        self.timeout = timeout
        self._prefix: str | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._replies: dict[str, asyncio.Future[Any]] = {}
        self._deadlines: deque[tuple[float, str]] = deque()  # (deadline, token), oldest first
        self._sweeper: asyncio.TimerHandle | None = None

    async def request(self, subject: str, data: bytes, headers: dict[str, str]) -> Any:
        """Publish ``data`` and wait for the reply. Raises ``nats.errors.TimeoutError`` or
        ``NoRespondersError`` as ``nc.request`` does."""
        prefix = self._prefix
        if prefix is None:
            prefix = await self._subscribe()
        token = str(next(self._ids))
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        replies, deadlines = self._replies, self._deadlines
        replies[token] = reply
        while deadlines and deadlines[0][1] not in replies:  # drop entries of answered requests
            deadlines.popleft()
        deadline = loop.time() + self.timeout
        deadlines.append((deadline, token))
        if self._sweeper is None:
            self._sweeper = loop.call_at(deadline, self._sweep)
        try:
            await self.nc.publish(subject, data, reply=prefix + token, headers=headers)
            msg = await reply
        finally:
            replies.pop(token, None)
        if msg.headers and msg.headers.get("Status") == "503":
            raise nats.errors.NoRespondersError
        return msg

    def _sweep(self) -> None:
        """Fail every request past its deadline; re-arm for the oldest one still waiting."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        replies, deadlines = self._replies, self._deadlines
        while deadlines:
            deadline, token = deadlines[0]
            reply = replies.get(token)
            if reply is not None and deadline > now:
                self._sweeper = loop.call_at(deadline, self._sweep)
                return
            deadlines.popleft()
            if reply is not None and not reply.done():
                reply.set_exception(nats.errors.TimeoutError())

    async def _subscribe(self) -> str:
        async with self._lock:
            if self._prefix is None:
                prefix = self.nc.new_inbox() + "."
                offset = len(prefix)
                replies = self._replies

                async def on_reply(msg: Any) -> None:
                    reply = replies.get(msg.subject[offset:])
                    if reply is not None and not reply.done():
                        reply.set_result(msg)

                await self.nc.subscribe(prefix + "*", cb=on_reply)
                self._prefix = prefix
            return self._prefix


__all__ = ["AckRequests"]
