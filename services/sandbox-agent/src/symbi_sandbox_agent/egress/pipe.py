"""Copying bytes between the sandbox's side and the upstream, held to the agent's token buckets and counted."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Protocol

from symbi_sandbox_agent.egress.bucket import TokenBucket

READ_SIZE = 256 * 1024
#: Once the sandbox has closed its side, how long the upstream has to finish its answer. (HTTP and TLS
#: clients do not half-close; a server that waits for a TLS close_notify the sandbox never sends would
#: otherwise hold the connection, and its record, open for its own shutdown timeout.)
DRAIN_AFTER_CLIENT_S = 1.0


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


class Counted(Protocol):
    """The record of one connection, whose byte counts grow as its bytes go (so a cancelled one has them)."""

    bytes_out: int
    bytes_in: int


async def copy(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, meter: Meter, conn: Counted, outgoing: bool
) -> None:
    """Copy until ``reader`` ends, then half-close ``writer``, counting into ``conn`` as the bytes go."""
    try:
        while data := await reader.read(READ_SIZE):
            await meter.pay(len(data))
            if outgoing:
                conn.bytes_out += len(data)
            else:
                conn.bytes_in += len(data)
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
    conn: Counted,
) -> None:
    """Both directions until the upstream's side ends (or the sandbox's, and then a short drain)."""
    up = asyncio.ensure_future(copy(client[0], upstream[1], out, conn, True))
    down = asyncio.ensure_future(copy(upstream[0], client[1], into, conn, False))
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if down in done:  # the upstream ended: the connection is over
            await asyncio.wait({up}, timeout=0.05)
        else:  # the sandbox ended its side: the upstream may finish its answer
            await asyncio.wait({down}, timeout=DRAIN_AFTER_CLIENT_S)
    finally:
        for t in (up, down):
            t.cancel()
        for t in (up, down):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
