"""The body of a streamed answer: the provider's chunks passed on as they come, read as they pass.

Whoever serves it (the egress proxy) iterates it and closes it (``aclose``); the end of the stream, an error
of the provider's connection, a cancellation or a close before the end all *finish* it exactly once: the
reservation is reconciled with what the stream reported or carried, released when the provider sent nothing at
all, and charged whole when the caller left before the end (the provider may have generated it all).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Literal

import httpx
import structlog

from symbi_sandbox_agent.models.wire import StreamTally

log = structlog.get_logger(__name__)

#: The largest reply (not streamed) read from a provider: far above any chat reply (128k tokens of JSON is
#: well under 2 MiB), so a bigger one is a misbehaving provider, not an answer to pass on.
MAX_REPLY_BYTES = 16 * 1024 * 1024
#: The largest error answer read from a provider (only its start is ever passed on).
MAX_ERROR_BYTES = 64 * 1024


async def read_at_most(response: httpx.Response, limit: int) -> bytes | None:
    """The body of ``response``, or None once it is longer than ``limit`` bytes (nothing more is read)."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


#: How a stream ended: the provider's end, the provider's connection breaking off, or the caller closing it
#: (or being cancelled) before the end, while the provider may still have been generating.
Ending = Literal["end", "provider", "caller"]


class Relay:
    """``finish(sent, ending)`` settles the call (``sent``: whether any chunk went out; ``ending``: how)."""

    def __init__(self, response: httpx.Response, tally: StreamTally, finish: Callable[[bool, Ending], None]) -> None:
        self.response = response
        self.tally = tally
        self._finish = finish
        self._chunks: AsyncIterator[bytes] | None = None
        self.sent = False
        self.finished = False
        self._ending: Ending = "caller"

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        if self.finished:
            raise StopAsyncIteration
        if self._chunks is None:
            self._chunks = self.response.aiter_bytes()
        try:
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
        except BaseException:
            await self.aclose()
            raise
        self.tally.feed(chunk)
        self.sent = True
        return chunk

    async def aclose(self) -> None:
        """Finish the call (once) and give the provider's connection back to the pool."""
        if self.finished:
            return
        self.finished = True
        self.tally.end()
        self._finish(self.sent, self._ending)
        await self.response.aclose()
