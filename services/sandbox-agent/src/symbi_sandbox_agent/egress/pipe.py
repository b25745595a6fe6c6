"""Relaying bytes between the sandbox's side and the upstream, held to the agent's token buckets and counted.

Once a connection is decided, its two transports are handed to :class:`Relay` protocols: each direction's
bytes go from ``data_received`` straight to the other transport's ``write`` (no stream buffers, no task
per chunk), reading pauses while the other side's write buffer is full or while the direction's token
bucket is in debt, and resumes when both allow.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Protocol

from symbi_sandbox_agent.egress.bucket import TokenBucket

#: Once the sandbox has closed its side, how long the upstream has to finish its answer. (HTTP and TLS
#: clients do not half-close; a server that waits for a TLS close_notify the sandbox never sends would
#: otherwise hold the connection, and its record, open for its own shutdown timeout.)
DRAIN_AFTER_CLIENT_S = 1.0


@dataclass(slots=True)
class Meter:
    """Bytes one direction of an agent's traffic carried, and the bucket that holds it to the limit."""

    bucket: TokenBucket | None
    total: int = 0

    def charge(self, n: int) -> float:
        """Count ``n`` bytes; the seconds the direction must wait before more (the bucket goes into debt, so
        concurrent connections of the agent queue behind each other's bytes without a lock)."""
        self.total += n
        if self.bucket is None:
            return 0.0
        return self.bucket.take(n, time.monotonic())

    async def pay(self, n: int) -> None:
        """Count ``n`` bytes and wait until the bucket lets them go."""
        wait = self.charge(n)
        if wait > 0:
            await asyncio.sleep(wait)


class Counted(Protocol):
    """The record of one connection, whose byte counts grow as its bytes go (so a cancelled one has them)."""

    bytes_out: int
    bytes_in: int


#: The buffer a relay reads into: small at first (most connections carry a request and an answer), grown
#: to the large one once a read fills it.
FIRST_READ_SIZE = 16 * 1024
READ_SIZE = 256 * 1024
#: Python 3.11's socket transport copies what it cannot send at once; later ones may keep a view of it, so
#: a buffer the transport still holds part of is not reused there.
KEEPS_VIEWS = sys.version_info >= (3, 12)


class Relay(asyncio.BufferedProtocol):
    """Reads one transport and writes what it reads to ``peer``; ``ended`` resolves at EOF or loss.

    It reads into a buffer of its own, reused while the peer's transport sends what it is given at once (a
    fresh 256 KiB ``bytes`` per read costs an allocation and its page faults); when the peer buffered part
    of it (a transport may keep a view of the data), or a read filled the small first one, the next read
    gets a new (large) buffer."""

    def __init__(self, peer: asyncio.Transport, meter: Meter, conn: Counted, outgoing: bool) -> None:
        self.peer = peer
        self.meter = meter
        self.conn = conn
        self.outgoing = outgoing
        self.transport: asyncio.Transport | None = None
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.other: Relay | None = None  # the relay reading ``peer``
        self._peer_full = False
        self._in_debt = False
        self._stream: asyncio.BaseProtocol | None = None
        self._buffer = memoryview(bytearray(FIRST_READ_SIZE))

    def start(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        # The stream protocol it replaces still learns of the connection's loss (its writer's wait_closed).
        self._stream = transport.get_protocol()
        transport.set_protocol(self)
        transport.resume_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._buffer[:nbytes])
        if (KEEPS_VIEWS and self.peer.get_write_buffer_size()) or nbytes == len(self._buffer) < READ_SIZE:
            self._buffer = memoryview(bytearray(READ_SIZE))

    def data_received(self, data: bytes | memoryview) -> None:
        n = len(data)
        if self.outgoing:
            self.conn.bytes_out += n
        else:
            self.conn.bytes_in += n
        self.peer.write(data)
        wait = self.meter.charge(n)
        if wait > 0:
            self._in_debt = True
            self._update()
            asyncio.get_running_loop().call_later(wait, self._paid)

    def _paid(self) -> None:
        self._in_debt = False
        self._update()

    def _update(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self._peer_full or self._in_debt:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    # The peer's write buffer is full or drained: asyncio tells the protocol of the peer's transport,
    # which is the other relay; it stops or restarts *this* one's reading.
    def pause_writing(self) -> None:
        if self.other is not None:
            self.other._peer_full = True
            self.other._update()

    def resume_writing(self) -> None:
        if self.other is not None:
            self.other._peer_full = False
            self.other._update()

    def eof_received(self) -> bool:
        if self.peer.can_write_eof() and not self.peer.is_closing():
            self.peer.write_eof()
        self._end()
        return True  # keep the other direction open

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        if self._stream is not None:
            self._stream.connection_lost(exc)

    def _end(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


def _buffered(reader: asyncio.StreamReader) -> bytes:
    """What ``reader`` holds already (read from the socket, not yet consumed), taken out of it."""
    buffer: bytearray = getattr(reader, "_buffer")  # noqa: B009 - no public API hands the buffer over
    data = bytes(buffer)
    buffer.clear()
    return data


async def splice(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    out: Meter,
    into: Meter,
    conn: Counted,
) -> None:
    """Both directions until the upstream's side ends (or the sandbox's, and then a short drain)."""
    c_transport, u_transport = client[1].transport, upstream[1].transport
    assert isinstance(c_transport, asyncio.Transport)
    assert isinstance(u_transport, asyncio.Transport)
    up = Relay(u_transport, out, conn, True)
    down = Relay(c_transport, into, conn, False)
    up.other, down.other = down, up
    for relay, reader in ((up, client[0]), (down, upstream[0])):
        pending = _buffered(reader)
        if pending:
            relay.data_received(pending)
        if reader.at_eof():
            relay.eof_received()
    up.start(c_transport)
    down.start(u_transport)
    try:
        done, _ = await asyncio.wait({up.ended, down.ended}, return_when=asyncio.FIRST_COMPLETED)
        if down.ended not in done:  # the sandbox ended its side: the upstream may finish its answer
            await asyncio.wait({down.ended}, timeout=DRAIN_AFTER_CLIENT_S)
        # What is still buffered for the sandbox goes out: closing its transport flushes first.
    finally:
        u_transport.close()
