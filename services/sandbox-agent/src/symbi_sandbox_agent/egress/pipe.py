"""Copying bytes between the sandbox's side and the upstream, held to the agent's token buckets and counted."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from symbi_sandbox_agent.egress.bucket import TokenBucket

READ_SIZE = 256 * 1024


@dataclass(slots=True)
class Meter:
    """Bytes one direction of an agent's traffic carried, and the bucket that holds it to the limit."""

    bucket: TokenBucket | None
    total: int = 0

    async def pay(self, n: int) -> None:
        """Count ``n`` bytes and wait until the bucket lets them go (the bucket goes into debt, so concurrent
        connections of the agent queue behind each other's bytes without a lock)."""
        self.total += n
        if self.bucket is None:
            return
        wait = self.bucket.take(n, time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)


async def copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, meter: Meter, counter: list[int]) -> None:
    """Copy until ``reader`` ends, then half-close ``writer``; ``counter[0]`` counts this connection's bytes."""
    try:
        while data := await reader.read(READ_SIZE):
            await meter.pay(len(data))
            counter[0] += len(data)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def splice(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    out: Meter,
    into: Meter,
) -> tuple[int, int]:
    """Both directions until the upstream's side ends; ``(bytes_out, bytes_in)`` of the connection."""
    sent, received = [0], [0]
    up = asyncio.ensure_future(copy(client[0], upstream[1], out, sent))
    down = asyncio.ensure_future(copy(upstream[0], client[1], into, received))
    try:
        await down  # the response ended (or the upstream closed): the connection is over
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(up), 0.05)
    finally:
        for t in (up, down):
            t.cancel()
        for t in (up, down):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
    return sent[0], received[0]
