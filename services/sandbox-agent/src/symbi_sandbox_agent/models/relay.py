"""The body of a streamed answer: the provider's chunks passed on as they come, read as they pass.

Whoever serves it (the egress proxy) iterates it and closes it (``aclose``); the end of the stream, an error
of the provider's connection, a cancellation or a close before the end all *finish* it exactly once: the
reservation is reconciled with what the stream reported or carried, released when the provider sent nothing at
all, and charged whole when the caller left before the end (the provider may have generated it all).

Two limits bound how long it holds the provider's connection and its reservation, whatever either side does:
the whole answer must have come within ``max_s`` (:data:`MAX_CALL_S`: a provider that keeps the stream open,
or trickles bytes, which no read timeout catches), and whenever it is the caller's turn (from the start, and
after each chunk it was handed) it must ask for the next chunk within ``stall_s`` (:data:`CALLER_STALL_S`: a
caller that stopped reading blocks the proxy's write of the last chunk for good, and never asks again). When
one trips, the provider's connection is closed, the call is charged whole like one the caller left (ending
``limit``) and the next ``__anext__`` raises :class:`StreamCutOff`. Nothing is read ahead: the relay holds one
chunk at a time, the caller's side at most what its transport buffers before a write waits, and what the
provider sends meanwhile waits in its connection (no read, no memory here).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Literal

import httpx
import structlog

from symbi_sandbox_agent.models.errors import StreamCutOff
from symbi_sandbox_agent.models.wire import StreamTally

log = structlog.get_logger(__name__)

#: The largest reply (not streamed) read from a provider: far above any chat reply (128k tokens of JSON is
#: well under 2 MiB), so a bigger one is a misbehaving provider, not an answer to pass on.
MAX_REPLY_BYTES = 16 * 1024 * 1024
#: The largest error answer read from a provider (only its start is ever passed on).
MAX_ERROR_BYTES = 64 * 1024
#: The longest a provider's answer may take to come in whole once its head arrived (streamed or not): well past
#: a long reasoning completion, and a bound on a provider that never ends its answer.
MAX_CALL_S = 30 * 60.0
#: The longest a streamed answer waits for its caller to ask for the next chunk (the write of the last one to
#: the sandbox is blocked while it reads nothing); a caller slowed by its bandwidth limit takes well under this.
CALLER_STALL_S = 60.0

#: The closes of provider connections cut off by a limit, running in the background (a reference each).
_CLOSES: set[asyncio.Task[None]] = set()


async def read_at_most(response: httpx.Response, limit: int) -> bytes | None:
    """The body of ``response``, or None once it is longer than ``limit`` bytes (nothing more is read)."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


#: How a stream ended: the provider's end, the provider's connection breaking off, the caller closing it (or
#: being cancelled) before the end while the provider may still have been generating, or the gateway cutting
#: it off at one of its limits (likewise before the end).
Ending = Literal["end", "provider", "caller", "limit"]


async def _close_quietly(response: httpx.Response) -> None:
    try:
        await response.aclose()
    except Exception as exc:  # the connection is dropped either way
        log.warning("a cut-off model stream did not close cleanly", error=repr(exc))


class Relay:
    """``finish(sent, ending)`` settles the call (``sent``: whether any chunk went out; ``ending``: how).
    ``max_s`` and ``stall_s``: the limits above, counted from now."""

    def __init__(
        self,
        response: httpx.Response,
        tally: StreamTally,
        finish: Callable[[bool, Ending], None],
        *,
        max_s: float = MAX_CALL_S,
        stall_s: float = CALLER_STALL_S,
    ) -> None:
        self.response = response
        self.tally = tally
        self._finish = finish
        self._chunks: AsyncIterator[bytes] | None = None
        self.sent = False
        self.finished = False
        self._ending: Ending = "caller"
        self.max_s = max_s
        self.stall_s = stall_s
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + max_s
        #: Why the call was cut off (raised by the next ``__anext__``); None while it was not.
        self.error: StreamCutOff | None = None
        self._closing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._arm()  # the caller's turn: it has to start reading

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        if self.error is not None:
            raise self.error
        if self.finished:
            raise StopAsyncIteration
        self._disarm()  # the caller is back; from here the provider's time counts (to the deadline)
        if self._chunks is None:
            self._chunks = self.response.aiter_bytes()
        try:
            async with asyncio.timeout_at(self._deadline) as limit:
                chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._ending = "end"
            await self.aclose()
            raise
        except httpx.HTTPError as exc:
            log.warning("a model stream broke off", error=str(exc))
            self._ending = "provider"
            await self.aclose()
            raise StopAsyncIteration from None
        except TimeoutError:
            if not limit.expired():
                await self.aclose()
                raise
            error = self._cut("deadline")
            await _close_quietly(self.response)
            raise error from None
        except BaseException:
            await self.aclose()
            raise
        self.tally.feed(chunk)
        self.sent = True
        self._arm()
        return chunk

    def _arm(self) -> None:
        """Cut the call off unless the caller asks for more within ``stall_s`` (and before the deadline)."""
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(min(loop.time() + self.stall_s, self._deadline), self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        """The caller held its turn too long (a timer's callback: the caller may never come back)."""
        self._timer = None
        if self.finished:
            return
        loop = asyncio.get_running_loop()
        self._cut("deadline" if loop.time() >= self._deadline else "caller_stalled")
        task = loop.create_task(_close_quietly(self.response))
        self._closing = task
        _CLOSES.add(task)
        task.add_done_callback(_CLOSES.discard)

    def _cut(self, limit: Literal["deadline", "caller_stalled"]) -> StreamCutOff:
        """Finish the call as cut off at ``limit`` (charged whole); the provider's connection is closed next."""
        if limit == "deadline":
            why = f"the answer did not end within {self.max_s:g} s"
        else:
            why = f"the caller read nothing for {self.stall_s:g} s"
        self.error = StreamCutOff(f"the model stream was cut off: {why}", limit=limit)
        log.warning("a model stream was cut off; charged whole", limit=limit, sent=self.sent)
        self._ending = "limit"
        self._settle()
        return self.error

    def _settle(self) -> None:
        self.finished = True
        self._disarm()
        self.tally.end()
        self._finish(self.sent, self._ending)

    async def aclose(self) -> None:
        """Finish the call (once) and give the provider's connection back to the pool (or drop it)."""
        if self.finished:
            if self._closing is not None:  # cut off while the caller held its turn: the close runs apart
                await asyncio.shield(self._closing)
            return
        self._settle()
        await self.response.aclose()
