"""A container's attach socket on the event loop: stdin written and stdout/stderr read without a thread.

The engine multiplexes both output streams on the attach connection (no TTY): each frame is an 8-byte
header — stream (1 = stdout, 2 = stderr), three zero bytes, the payload's length (big-endian) — and the
payload. :class:`FrameParser` splits the bytes read into frames (pure); :class:`AttachStream` reads and
writes the socket with the loop's non-blocking socket calls, so a run needs no output thread and no
thread hop per write. Reading and writing stay independent: a write that fails (the workload exited
without reading its input) does not stop the output from being read to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable

HEADER_BYTES = 8
#: How much is read from the socket at a time.
READ_BYTES = 256 * 1024


class FrameParser:
    """Splits the multiplexed stream into ``(stream, payload)`` frames. Pure."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The frames completed by ``data`` (a frame's payload may arrive in many reads)."""
        buf = self._buffer
        buf += data
        out: list[tuple[int, bytes]] = []
        start = 0
        while len(buf) - start >= HEADER_BYTES:
            size = int.from_bytes(buf[start + 4 : start + 8], "big")
            end = start + HEADER_BYTES + size
            if len(buf) < end:
                break
            if size:
                out.append((buf[start], bytes(buf[start + HEADER_BYTES : end])))
            start = end
        del buf[:start]
        return out

    @property
    def pending(self) -> int:
        """Bytes of a frame not complete yet."""
        return len(self._buffer)


class AttachStream:
    """The attach socket of one container, used from the event loop.

    ``raw`` is the connected socket; ``release`` closes what wraps it (the HTTP response it came from).
    Writes go one at a time, in order; :meth:`aclose` stops a write still blocked (a workload that does not
    read its stdin) before the socket is closed, so the loop never watches a closed descriptor."""

    def __init__(self, raw: socket.socket, release: Callable[[], None] | None = None) -> None:
        raw.setblocking(False)
        self.raw = raw
        self._release = release
        self._parser = FrameParser()
        self._write_lock = asyncio.Lock()
        self._writes: set[asyncio.Future[None]] = set()
        self.closed = False

    async def frames(self) -> AsyncIterator[tuple[int, bytes]]:
        """``(stream, data)`` frames until the container's output ends (1 = stdout, 2 = stderr)."""
        loop = asyncio.get_running_loop()
        while not self.closed:
            try:
                data = await loop.sock_recv(self.raw, READ_BYTES)
            except OSError:
                return
            if not data:
                return
            for frame in self._parser.feed(data):
                yield frame

    async def send(self, data: bytes) -> None:
        """Write to the workload's stdin (which stays open); a workload gone (or the socket closed) is not an error."""
        async with self._write_lock:
            if self.closed:
                return
            write = asyncio.ensure_future(asyncio.get_running_loop().sock_sendall(self.raw, data))
            self._writes.add(write)
            write.add_done_callback(self._written)
            await asyncio.wait((write,))

    def _written(self, write: asyncio.Future[None]) -> None:
        self._writes.discard(write)
        if not write.cancelled():
            write.exception()  # retrieved: a failed write (the workload exited) is not an error

    async def send_input(self, data: bytes) -> None:
        """Write the task's input and close our side: the workload sees EOF on stdin."""
        if data:
            await self.send(data)
        if not self.closed:
            with contextlib.suppress(OSError):
                self.raw.shutdown(socket.SHUT_WR)

    async def aclose(self) -> None:
        """Stop a write still in flight, then close the socket (and what wraps it)."""
        if self.closed:
            return
        self.closed = True
        writes = list(self._writes)
        for write in writes:
            write.cancel()
        if writes:
            await asyncio.wait(writes)  # their done callbacks have taken the socket off the loop
        with contextlib.suppress(OSError):
            self.raw.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.raw.close()
        if self._release is not None:
            with contextlib.suppress(Exception):
                self._release()
